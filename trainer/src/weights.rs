//! Safetensors in and out: HF model directories (one `model.safetensors` or shards listed by
//! `model.safetensors.index.json`) load into variables by name with dtype conversion; files are written
//! with HF's `{"format": "pt"}` metadata, names sorted (identical bytes for identical tensors), through a
//! temporary name so that a reader never sees half a file.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

/// An error about the file at `path`.
pub(crate) fn file_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::File {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Writes `bytes` to `path` through a temporary sibling and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(crate::error::io_error(path))
}

fn dtype_name(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Float => "F32",
        Kind::Double => "F64",
        Kind::Half => "F16",
        Kind::BFloat16 => "BF16",
        Kind::Int64 => "I64",
        Kind::Int => "I32",
        Kind::Int16 => "I16",
        Kind::Int8 => "I8",
        Kind::Uint8 => "U8",
        Kind::Bool => "BOOL",
        _ => return None,
    })
}

/// One tensor of a safetensors file, as its header lists it.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    /// Tensor name.
    pub name: String,
    /// safetensors dtype name (`F32`, `BF16`, …).
    pub dtype: &'static str,
    /// Shape.
    pub shape: Vec<i64>,
    /// Bytes of its data.
    pub bytes: usize,
}

/// The length prefix and JSON header of a safetensors file whose tensors follow in the order of
/// `entries` (which must be sorted by name; `format: pt` metadata, padded to 8 bytes).
pub fn safetensors_header(entries: &[TensorEntry]) -> Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0usize;
    for entry in entries {
        header.insert(
            entry.name.clone(),
            serde_json::json!({ "dtype": entry.dtype, "shape": entry.shape, "data_offsets": [offset, offset + entry.bytes] }),
        );
        offset += entry.bytes;
    }
    let mut json =
        serde_json::to_vec(&header).map_err(crate::error::json_error("safetensors header"))?;
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// Serialises named tensors as safetensors bytes (names sorted, `format: pt` metadata).
pub fn safetensors_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let sorted: BTreeMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut entries = Vec::with_capacity(sorted.len());
    let mut data = Vec::new();
    for (name, tensor) in &sorted {
        let kind = tensor.kind();
        let dtype = dtype_name(kind).ok_or_else(|| Error::Setting {
            key: (*name).to_string(),
            reason: format!("tensor kind {kind:?} cannot be saved"),
        })?;
        let tensor = tensor.detach().to_device(Device::Cpu).contiguous();
        let numel = tensor.numel();
        let start = data.len();
        data.resize(start + numel * kind.elt_size_in_bytes(), 0);
        tensor
            .f_copy_data_u8(&mut data[start..], numel)
            .map_err(|source| Error::Torch {
                what: format!("serialising {name}"),
                source,
            })?;
        entries.push(TensorEntry {
            name: (*name).to_string(),
            dtype,
            shape: tensor.size(),
            bytes: data.len() - start,
        });
    }
    let mut out = safetensors_header(&entries)?;
    out.extend_from_slice(&data);
    Ok(out)
}

/// Writes named tensors to a safetensors file atomically.
pub fn save_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    write_atomically(path, &safetensors_bytes(tensors)?)
}

/// Reads every tensor of a safetensors file (on the CPU, in the file's dtype).
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    Tensor::read_safetensors(path).map_err(|source| Error::Torch {
        what: format!("reading {}", path.display()),
        source,
    })
}

/// The weight files of an HF model directory: the shards of `model.safetensors.index.json`, or
/// `model.safetensors`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(crate::error::io_error(&index))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(crate::error::json_error(index.display()))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| file_error(&index, "no weight_map object"))?;
        let files: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(file_error(
        dir,
        "no model.safetensors or model.safetensors.index.json (PyTorch .bin checkpoints are not supported)",
    ))
}

/// Copies tensors from `files` into `variables` by name, converting dtype. Names in `ignore` (and
/// rotary caches) are skipped; any other name without a variable, a shape mismatch or a variable left
/// without a tensor is an error that names the file and key.
pub fn load_into(
    variables: &HashMap<String, Tensor>,
    files: &[PathBuf],
    ignore: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let mut loaded = BTreeSet::new();
    for file in files {
        let tensors = read_safetensors(file)?;
        let mut unexpected = Vec::new();
        for (name, tensor) in tensors {
            let Some(variable) = variables.get(&name) else {
                if !ignore(&name) && !name.ends_with("rotary_emb.inv_freq") {
                    unexpected.push(name);
                }
                continue;
            };
            if variable.size() != tensor.size() {
                return Err(file_error(
                    file,
                    format!(
                        "{name} has shape {:?}, the model expects {:?}",
                        tensor.size(),
                        variable.size()
                    ),
                ));
            }
            let mut variable = variable.shallow_clone();
            tch::no_grad(|| variable.f_copy_(&tensor.to_kind(variable.kind()))).map_err(
                |source| Error::Torch {
                    what: format!("loading {name} from {}", file.display()),
                    source,
                },
            )?;
            loaded.insert(name);
        }
        if !unexpected.is_empty() {
            unexpected.sort();
            return Err(file_error(
                file,
                format!(
                    "{} tensors the model does not have, e.g. {}",
                    unexpected.len(),
                    unexpected
                        .iter()
                        .take(3)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    let mut missing: Vec<&String> = variables.keys().filter(|k| !loaded.contains(*k)).collect();
    if !missing.is_empty() {
        missing.sort();
        let shown: Vec<&str> = missing.iter().take(3).map(|s| s.as_str()).collect();
        let where_ = files
            .first()
            .and_then(|f| f.parent())
            .unwrap_or(Path::new("."));
        return Err(file_error(
            where_,
            format!(
                "{} weights missing, e.g. {}",
                missing.len(),
                shown.join(", ")
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_read_back_and_carry_hf_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
        let b = Tensor::from_slice(&[7i64, 8]);
        save_safetensors(
            &path,
            &[
                ("b".into(), b.shallow_clone()),
                ("a".into(), a.shallow_clone()),
            ],
        )
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
        assert!(
            header.contains(r#""__metadata__":{"format":"pt"}"#),
            "{header}"
        );
        let back = read_safetensors(&path).unwrap();
        let names: Vec<&str> = back.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.len(), 2);
        for (name, tensor) in &back {
            let original = if name == "a" { &a } else { &b };
            assert!(tensor.equal(original), "{name}");
        }
    }
}
