-- Translated instructions from `dapt generate --template configs/generate/translate.jinja`: a table
-- `translated` of its output (id, prompt, response, finish_reason, …) and a table `source` of the rows
-- it read (id, text). Kept where the translation finished, is Russian by lang_id, and its length is
-- within 0.5–2× the source's (a guard against truncated, runaway or untranslated answers).
SELECT t.id, t.response AS text, s.text AS source_text
FROM translated t JOIN source s ON t.id = s.id
WHERE t.finish_reason = 'stop'
  AND lang_id(t.response) = 'ru'
  AND character_length(t.response) BETWEEN 0.5 * character_length(s.text) AND 2.0 * character_length(s.text)
