-- Synthetic QA from `dapt generate --template configs/generate/synth-qa.jinja` (a table `qa_raw` of its
-- output: id, prompt, response, …): the responses that follow the form, split into question and
-- answer, as a mix component of kind "qa" (id, text, answer) with the Stage-1 document they came from.
SELECT
  id || '#qa' AS id,
  id AS source_id,
  trim(m[1]) AS question,
  trim(m[2]) AS answer,
  trim(m[1]) || chr(10) || trim(m[2]) AS text
FROM (
  SELECT id, regexp_match(response, '(?s)Question:\s*(.+?)\s*\nAnswer:\s*(.+)') AS m
  FROM qa_raw
)
WHERE m IS NOT NULL AND length(trim(m[1])) > 0 AND length(trim(m[2])) > 0
