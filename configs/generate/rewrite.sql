-- The component with its flagged rows rewritten (`rewritten`: the output of `dapt generate` over
-- rewrite-flagged.sql): a rewrite that lang_id reads as Russian replaces the row, a failed one drops it;
-- the other rows stay as they were.
SELECT c.id,
       CASE WHEN r.id IS NULL THEN c.text ELSE r.response END AS text
FROM component c LEFT JOIN rewritten r ON c.id = r.id
WHERE r.id IS NULL OR (lang_id(r.response) = 'ru' AND r.finish_reason = 'stop')
