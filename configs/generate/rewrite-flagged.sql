-- The rows of a component that the lang-swap attribution points at (`mix_report.json`: a target-language
-- component whose documents are not in the target language): here the rows of table `component` that
-- lang_id does not read as Russian, for `dapt generate --template configs/generate/rewrite.jinja`.
SELECT id, text FROM component WHERE lang_id(text) IS DISTINCT FROM 'ru'
