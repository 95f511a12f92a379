//! Training batches from packed rows: ids, per-segment positions, a block-diagonal causal mask and
//! next-token targets that never cross a segment boundary.
use dapt_core::PackedRow;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Which tokens a batch trains on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Continual pretraining: every next token within a segment.
    #[default]
    Cpt,
    /// Supervised fine-tuning: only next tokens whose `loss_mask` is set (the answers).
    Sft,
    /// Direct preference optimisation (Rafailov et al.): rows hold (chosen, rejected) pairs of
    /// segments (`dapt pack --preference`); each response's log-probability is the sum over its
    /// `loss_mask` tokens, compared with the frozen reference model's (see `crate::preference`).
    Dpo,
    /// SimPO (Meng et al.), reference-free: each response's mean log-probability per token, a
    /// target margin `simpo_gamma` between chosen and rejected; no reference pass at all.
    Simpo,
}

impl Objective {
    /// Whether the objective compares (chosen, rejected) pairs.
    pub fn is_preference(self) -> bool {
        matches!(self, Self::Dpo | Self::Simpo)
    }
}

/// Target value that the loss ignores.
pub const IGNORE_INDEX: i64 = -100;

/// One batch on a device.
#[derive(Debug)]
pub struct Batch {
    /// `[batch, seq]` int64 token ids.
    pub input_ids: Tensor,
    /// `[batch, seq]` int64 positions, restarting at 0 in each segment.
    pub positions: Tensor,
    /// `[batch, 1, seq, seq]` bool, true where query `i` may attend to key `j` (same segment, `j <= i`).
    pub mask: Tensor,
    /// `[batch, seq]` int64 next-token targets, [`IGNORE_INDEX`] where there is none: at a segment's last
    /// token, on pads, and where the next token's `loss_mask` is false.
    pub targets: Tensor,
    /// Number of positions whose target counts.
    pub target_count: i64,
    /// Where each segment (pads at a row's end included, as a segment of their own) starts in the
    /// batch flattened to `batch × seq` tokens, and the total at the end: the `cu_seqlens` of
    /// variable-length attention.
    pub cu_seqlens: Vec<i32>,
    /// The longest segment.
    pub max_seqlen: i64,
    /// `[batch · seq]` int64: for each position whose target counts, the number of its segment
    /// counted over the whole batch (row by row, pads excluded), else -1. Preference objectives sum
    /// target log-probabilities per segment with it.
    pub target_segments: Tensor,
    /// Segments (pads excluded) in the batch.
    pub segment_count: i64,
}

impl Batch {
    /// Builds a batch that honours `loss_mask` (the SFT objective); every row must have the same length.
    pub fn from_rows(rows: &[&PackedRow], device: Device) -> Self {
        Self::from_rows_with(rows, device, Objective::Sft)
    }

    /// Builds a batch for an objective; every row must have the same length.
    pub fn from_rows_with(rows: &[&PackedRow], device: Device, objective: Objective) -> Self {
        let use_mask = objective != Objective::Cpt;
        let batch = rows.len() as i64;
        let seq = rows.first().map_or(0, |r| r.input_ids.len()) as i64;
        let mut ids = Vec::with_capacity((batch * seq) as usize);
        let mut positions = Vec::with_capacity(ids.capacity());
        let mut segment_ids = Vec::with_capacity(ids.capacity());
        let mut targets = Vec::with_capacity(ids.capacity());
        let mut target_count = 0;
        let mut cu_seqlens = vec![0i32];
        let mut max_seqlen = 0i64;
        let mut target_segments = Vec::with_capacity((batch * seq) as usize);
        let mut segment_count = 0i64;
        for row in rows {
            let start = segment_ids.len();
            let mut used = 0;
            for &length in &row.segment_lengths {
                used += i64::from(length);
                cu_seqlens.push(start as i32 + used as i32);
                max_seqlen = max_seqlen.max(i64::from(length));
            }
            if used < seq {
                cu_seqlens.push(start as i32 + seq as i32);
                max_seqlen = max_seqlen.max(seq - used);
            }
            for (segment, &length) in row.segment_lengths.iter().enumerate() {
                for position in 0..i64::from(length) {
                    positions.push(position);
                    segment_ids.push(segment as i64);
                }
            }
            // Pads form a segment of their own so that every query attends to at least itself.
            let pad_segment = row.segment_lengths.len() as i64;
            for position in 0..(seq as usize - (segment_ids.len() - start)) {
                positions.push(position as i64);
                segment_ids.push(pad_segment);
            }
            let row_segments = &segment_ids[start..];
            for t in 0..seq as usize {
                ids.push(i64::from(row.input_ids[t]));
                let next = t + 1;
                let valid = next < seq as usize
                    && row_segments[t] == row_segments[next]
                    && row_segments[t] != pad_segment
                    && (!use_mask || row.loss_mask.get(next).copied().unwrap_or(true));
                if valid {
                    targets.push(i64::from(row.input_ids[next]));
                    target_segments.push(segment_count + row_segments[t]);
                    target_count += 1;
                } else {
                    targets.push(IGNORE_INDEX);
                    target_segments.push(-1);
                }
            }
            segment_count += row.segment_lengths.len() as i64;
        }
        let shape = [batch, seq];
        let segment_ids = Tensor::from_slice(&segment_ids)
            .view(shape)
            .to_device(device);
        let same_segment = segment_ids
            .unsqueeze(2)
            .eq_tensor(&segment_ids.unsqueeze(1));
        let causal = Tensor::ones([seq, seq], (Kind::Bool, device)).tril(0);
        let mask = same_segment.logical_and(&causal).unsqueeze(1);
        Self {
            input_ids: Tensor::from_slice(&ids).view(shape).to_device(device),
            positions: Tensor::from_slice(&positions).view(shape).to_device(device),
            mask,
            targets: Tensor::from_slice(&targets).view(shape).to_device(device),
            target_count,
            cu_seqlens,
            max_seqlen,
            target_segments: Tensor::from_slice(&target_segments).to_device(device),
            segment_count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_mask_and_targets_respect_segments() {
        let row = PackedRow {
            input_ids: vec![5, 6, 7, 8, 9, 0],
            segment_lengths: vec![3, 2],
            loss_mask: vec![true, true, true, true, true, false],
            ..Default::default()
        };
        let batch = Batch::from_rows(&[&row], Device::Cpu);
        let positions: Vec<i64> = batch.positions.view([-1]).try_into().unwrap();
        assert_eq!(positions, [0, 1, 2, 0, 1, 0]);
        let targets: Vec<i64> = batch.targets.view([-1]).try_into().unwrap();
        assert_eq!(targets, [6, 7, -100, 9, -100, -100]);
        assert_eq!(batch.target_count, 3);
        let mask: Vec<bool> = batch.mask.view([-1]).try_into().unwrap();
        let at = |i: usize, j: usize| mask[i * 6 + j];
        assert!(at(2, 0) && at(2, 2) && !at(2, 3));
        assert!(!at(3, 2) && at(3, 3) && at(4, 3) && !at(3, 4));
        assert!(at(5, 5) && !at(5, 4));
        assert_eq!(batch.cu_seqlens, [0, 3, 5, 6]);
        assert_eq!(batch.max_seqlen, 3);
        let segments: Vec<i64> = batch.target_segments.shallow_clone().try_into().unwrap();
        assert_eq!(segments, [0, 0, -1, 1, -1, -1]);
        assert_eq!(batch.segment_count, 2);
    }

    /// Segment starts over a flattened batch agree with the mask: tokens i and j share a segment
    /// exactly when no boundary of `cu_seqlens` lies in (i, j].
    #[test]
    fn cu_seqlens_delimit_the_masks_segments() {
        let rows = [
            PackedRow {
                input_ids: vec![1; 8],
                segment_lengths: vec![8],
                loss_mask: vec![true; 8],
                ..Default::default()
            },
            PackedRow {
                input_ids: vec![1; 8],
                segment_lengths: vec![2, 1, 3],
                loss_mask: vec![true; 8],
                ..Default::default()
            },
        ];
        let batch = Batch::from_rows(&[&rows[0], &rows[1]], Device::Cpu);
        assert_eq!(batch.cu_seqlens, [0, 8, 10, 11, 14, 16]);
        assert_eq!(batch.max_seqlen, 8);
        let mask: Vec<bool> = batch.mask.view([-1]).try_into().unwrap();
        for (r, row_start) in [0usize, 8].into_iter().enumerate() {
            for i in 0..8 {
                for j in 0..=i {
                    let (a, b) = (row_start + j, row_start + i);
                    let same = !batch
                        .cu_seqlens
                        .iter()
                        .any(|&c| (c as usize) > a && (c as usize) <= b);
                    assert_eq!(mask[r * 64 + i * 8 + j], same, "row {r}, {i} → {j}");
                }
            }
        }
    }
}
