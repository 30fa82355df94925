//! The SQL the store runs on its table: [`Sql`], the statements that follow from the table name
//! (create, load, the fenced update and insert, which also write removals), and [`quote_table`], which quotes that name.

#[derive(Debug, Clone)]
pub(super) struct Sql {
    /// For a schema-qualified table: create the schema unless it exists (checked first, so a role
    /// that may not create schemas works with one created for it).
    pub(super) create_schema: Option<String>,
    pub(super) create: String,
    pub(super) load: String,
    pub(super) update_fenced: String,
    pub(super) insert_fenced: String,
    /// The generation of a key's removal (its row's `tokens` the JSON `null`), to say why a
    /// fenced write was refused.
    pub(super) removed_generation: String,
}

impl Sql {
    pub(super) fn for_table(table: &str) -> Self {
        let t = quote_table(table);
        let create_schema = table.split_once('.').map(|(schema, _)| {
            let literal = schema.replace('\'', "''");
            format!(
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = '{literal}') \
                 THEN CREATE SCHEMA {}; END IF; END $$",
                quote_identifier(schema)
            )
        });
        Self {
            create_schema,
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
            removed_generation: format!("SELECT generation FROM {t} WHERE key = $1 AND tokens = 'null'::jsonb"),
        }
    }
}

/// `name` or `schema.name`, each part quoted as an SQL identifier.
fn quote_table(table: &str) -> String {
    match table.split_once('.') {
        Some((schema, name)) => format!("{}.{}", quote_identifier(schema), quote_identifier(name)),
        None => quote_identifier(table),
    }
}

fn quote_identifier(part: &str) -> String {
    format!("\"{}\"", part.replace('"', "\"\""))
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

    #[test]
    fn a_schema_qualified_table_creates_its_schema_first_a_plain_one_none() {
        assert!(Sql::for_table("tokens").create_schema.is_none());
        let sql = Sql::for_table("o'auth.withings");
        let create = sql.create_schema.unwrap();
        assert!(create.contains("nspname = 'o''auth'") && create.contains("CREATE SCHEMA \"o'auth\""), "{create}");
    }
}
