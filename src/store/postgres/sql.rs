//! The SQL the store runs on its table: [`Sql`], the statements that follow from the table name
//! (create, load, the fenced update and insert), and [`quote_table`], which quotes that name.

#[derive(Debug, Clone)]
pub(super) struct Sql {
    pub(super) create: String,
    pub(super) load: String,
    pub(super) update_fenced: String,
    pub(super) insert_fenced: String,
}

impl Sql {
    pub(super) fn for_table(table: &str) -> Self {
        let t = quote_table(table);
        Self {
            create: format!(
                "CREATE TABLE IF NOT EXISTS {t} (\
                 key text PRIMARY KEY, \
                 tokens jsonb NOT NULL, \
                 generation bigint NOT NULL, \
                 updated_at timestamptz NOT NULL DEFAULT now())"
            ),
            load: format!("SELECT tokens::text, generation FROM {t} WHERE key = $1"),
            update_fenced: format!(
                "UPDATE {t} SET tokens = $2::jsonb, generation = generation + 1, updated_at = now() \
                 WHERE key = $1 AND generation = $3 RETURNING generation"
            ),
            insert_fenced: format!(
                "INSERT INTO {t} (key, tokens, generation, updated_at) VALUES ($1, $2::jsonb, 1, now()) \
                 ON CONFLICT (key) DO NOTHING RETURNING generation"
            ),
        }
    }
}

/// `name` or `schema.name`, each part quoted as an SQL identifier.
fn quote_table(table: &str) -> String {
    let quote = |part: &str| format!("\"{}\"", part.replace('"', "\"\""));
    match table.split_once('.') {
        Some((schema, name)) => format!("{}.{}", quote(schema), quote(name)),
        None => quote(table),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_quoted_identifiers() {
        assert_eq!(quote_table("tokens"), "\"tokens\"");
        assert_eq!(quote_table("auth.Tokens"), "\"auth\".\"Tokens\"");
        assert_eq!(quote_table("we\"ird"), "\"we\"\"ird\"");
    }
}
