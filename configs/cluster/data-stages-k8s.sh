#!/usr/bin/env bash
# The data stages that split into job arrays, as Kubernetes Indexed Jobs applied one after another
# (Kubernetes has no dependencies between Jobs: each is applied when `kubectl wait` saw the one before
# complete): ingest → near dedup (signatures, links, clusters) → CPT packing of the kept documents.
# Each index sets JOB_COMPLETION_INDEX, which `--shard env` / `--partition env` read (with
# DAPT_SHARD_COUNT); a failed index is retried by the Job (backoffLimitPerIndex) and redoes only what it
# had not published. `dapt status URL` says where each stands.
#
#   configs/cluster/data-stages-k8s.sh s3://raw/fineweb/ s3://work/fineweb/ /models/tokenizer.json [JOBS=64]
#
# Needs: kubectl for the cluster, an image `dapt:latest` with the data-only build and the tokenizer at
# the given path, and a Secret `s3-credentials` (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
# AWS_ENDPOINT_URL). Sources files go into a ConfigMap `dapt-stages-sources`.
set -euo pipefail
raw=${1:?raw input URL}
work=${2:?work URL prefix}
tokenizer=${3:?tokenizer.json path inside the image}
jobs=${4:-64}
work=${work%/}
image=${DAPT_IMAGE:-dapt:latest}
kubectl create configmap dapt-stages-sources --dry-run=client -o yaml \
    --from-literal=docs.toml="$(printf '[sources.docs]\nurl = "%s/docs/"\n' "$work")" \
    --from-literal=pack.toml="$(printf '[sources.docs]\nurl = "%s/docs/"\n[sources.duplicates]\nurl = "%s/duplicates/"\n' "$work" "$work")" \
    | kubectl apply -f -

# One Job: NAME, COMPLETIONS, then dapt's arguments (a JSON list).
job() {
    local name=$1 completions=$2 args=$3
    kubectl delete job "$name" --ignore-not-found
    kubectl apply -f - <<YAML
apiVersion: batch/v1
kind: Job
metadata: {name: $name}
spec:
  completionMode: Indexed
  completions: $completions
  parallelism: $completions
  backoffLimitPerIndex: 3
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: dapt
          image: $image
          args: $args
          env: [{name: DAPT_SHARD_COUNT, value: "$completions"}]
          envFrom: [{secretRef: {name: s3-credentials}}]
          volumeMounts: [{name: sources, mountPath: /etc/dapt}]
          resources: {requests: {cpu: "4", memory: 16Gi}}
      volumes: [{name: sources, configMap: {name: dapt-stages-sources}}]
YAML
    kubectl wait --for=condition=complete --timeout=24h "job/$name"
}

job dapt-ingest "$jobs" "[\"ingest\", \"$raw\", \"--out\", \"$work/docs/\", \"--shard\", \"env\", \"--on-error\", \"skip\"]"
job dapt-near-signatures "$jobs" "[\"dedup\", \"near-signatures\", \"--config\", \"/etc/dapt/docs.toml\", \"-e\", \"SELECT id, text FROM docs\", \"--work\", \"$work/dedup/\", \"--shard\", \"env\", \"--partitions\", \"$jobs\"]"
job dapt-near-links "$jobs" "[\"dedup\", \"near-links\", \"--config\", \"/etc/dapt/docs.toml\", \"--work\", \"$work/dedup/\", \"--partition\", \"env\"]"
job dapt-near-clusters 1 "[\"dedup\", \"near-clusters\", \"--config\", \"/etc/dapt/docs.toml\", \"--work\", \"$work/dedup/\", \"--out\", \"$work/duplicates/duplicates.parquet\"]"
job dapt-pack "$jobs" "[\"pack\", \"--config\", \"/etc/dapt/pack.toml\", \"-e\", \"SELECT d.id, d.text FROM docs d LEFT JOIN duplicates x ON d.id = x.id WHERE x.kept IS NOT FALSE\", \"--tokenizer\", \"$tokenizer\", \"--out\", \"$work/packed/\", \"--shard\", \"env\"]"
