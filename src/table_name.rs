//! Naming a table to the operating functions (`imagestore_check('images')`, ...) as SQL names it.
//!
//! A name is `table`, `schema.table`, or either part quoted as SQL quotes identifiers (`"a.b"`,
//! `main."my table"`, `[x]`, `` `x` ``). An unqualified name is looked up as SQLite looks up a
//! table in a statement: in `temp`, then `main`, then every attached database in the order it was
//! attached; the first database that holds a table of that name (ASCII case ignored) has it. So
//! `imagestore_check('images')` always acts on the table that `SELECT ... FROM images` reads (a
//! view of that name included, which is then not an imagestore table).
//!
//! Invariant: the answer names a table that exists in the schema it gives, with the name as that
//! schema spells it; whether it is an imagestore table is the caller's check.

use rusqlite::{Connection, OptionalExtension};

use crate::error::{Error, Result};

/// A table found in the connection's schemas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    /// The database holding it, as `PRAGMA database_list` names it (`main`, `temp`, an alias).
    pub schema: String,
    /// The table's name as its schema spells it.
    pub table: String,
    /// Its `CREATE` statement.
    pub sql: String,
}

/// Finds the table that `name` denotes on connection `db`.
pub fn resolve(db: &Connection, name: &str) -> Result<TableName> {
    let not_found = || Error::BadArgument(format!("no table named {name}"));
    let parts = split_name(name).ok_or_else(|| {
        Error::BadArgument(format!(
            "{name} is not a table name: give `table`, `schema.table`, or quote a name holding a dot (\"a.b\")"
        ))
    })?;
    let schemas = schemas_in_lookup_order(db)?;
    match parts.as_slice() {
        [table] => {
            for schema in &schemas {
                if let Some(found) = find_in(db, schema, table)? {
                    return Ok(found);
                }
            }
            Err(not_found())
        }
        [schema, table] => {
            let schema = schemas
                .iter()
                .find(|s| s.eq_ignore_ascii_case(schema))
                .ok_or_else(|| {
                    Error::BadArgument(format!(
                        "{name}: no database named {schema} (quote a table name holding a dot: '\"{name}\"')"
                    ))
                })?;
            find_in(db, schema, table)?.ok_or_else(not_found)
        }
        _ => Err(not_found()),
    }
}

/// The connection's databases in the order SQLite searches them for an unqualified name.
fn schemas_in_lookup_order(db: &Connection) -> Result<Vec<String>> {
    let mut listed: Vec<(i64, String)> = db
        .prepare("SELECT seq, name FROM pragma_database_list")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()
        })
        .map_err(Error::host("listing the databases"))?;
    // `temp` exists for every connection, listed or not (it is made at its first use).
    if !listed
        .iter()
        .any(|(_, name)| name.eq_ignore_ascii_case("temp"))
    {
        listed.push((1, "temp".to_string()));
    }
    // `temp` (seq 1) before `main` (seq 0), then attached ones by seq.
    listed.sort_by_key(|(seq, _)| match seq {
        1 => -1,
        other => *other,
    });
    Ok(listed.into_iter().map(|(_, name)| name).collect())
}

/// The table `table` of database `schema`, if there is one.
fn find_in(db: &Connection, schema: &str, table: &str) -> Result<Option<TableName>> {
    let master = if schema.eq_ignore_ascii_case("temp") {
        "sqlite_temp_master".to_string()
    } else {
        format!("{}.sqlite_master", quote(schema))
    };
    db.query_row(
        &format!(
            "SELECT name, sql FROM {master} WHERE type IN ('table', 'view') AND name = ?1 COLLATE NOCASE"
        ),
        [table],
        |r| {
            Ok(TableName {
                schema: schema.to_string(),
                table: r.get(0)?,
                sql: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
            })
        },
    )
    .optional()
    .map_err(Error::host(format!("looking up {schema}.{table}")))
}

/// `name` quoted as an SQL identifier.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Splits `a`, `a.b`, `"a.b"`, `s."a.b"`, `[a]`, `` `a` `` into their unquoted parts; `None`
/// for text that is not one or two identifiers separated by a dot.
fn split_name(name: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut chars = name.trim().chars().peekable();
    loop {
        let part = match chars.peek()? {
            '"' | '`' | '[' => {
                let open = chars.next()?;
                let close = if open == '[' { ']' } else { open };
                let mut part = String::new();
                loop {
                    let c = chars.next()?;
                    if c == close {
                        // A doubled closing quote is one quote character ("" in "a""b").
                        if close != ']' && chars.peek() == Some(&close) {
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    part.push(c);
                }
                part
            }
            _ => {
                let mut part = String::new();
                while let Some(&c) = chars.peek() {
                    if c == '.' {
                        break;
                    }
                    part.push(c);
                    chars.next();
                }
                part
            }
        };
        if part.is_empty() {
            return None;
        }
        parts.push(part);
        match chars.next() {
            None => break,
            Some('.') => continue,
            Some(_) => return None,
        }
    }
    (parts.len() <= 2).then_some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(name: &str) -> Option<Vec<String>> {
        split_name(name)
    }

    #[test]
    fn names_split_as_sql_quotes_them() {
        assert_eq!(parts("images"), Some(vec!["images".into()]));
        assert_eq!(
            parts("main.images"),
            Some(vec!["main".into(), "images".into()])
        );
        assert_eq!(parts("\"a.b\""), Some(vec!["a.b".into()]));
        assert_eq!(parts("aux.\"a.b\""), Some(vec!["aux".into(), "a.b".into()]));
        assert_eq!(parts("[x y].`q\"`"), Some(vec!["x y".into(), "q\"".into()]));
        assert_eq!(parts("\"a\"\"b\""), Some(vec!["a\"b".into()]));
        for bad in ["", "a.b.c", "a.", ".a", "\"open", "\"a\"x", "a..b"] {
            assert_eq!(parts(bad), None, "{bad}");
        }
    }

    fn connection() -> Connection {
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch(
            "ATTACH ':memory:' AS aux; ATTACH ':memory:' AS other;
             CREATE TABLE aux.images(x); CREATE TABLE other.images(x); CREATE TABLE other.\"a.b\"(x);",
        )
        .unwrap();
        db
    }

    #[test]
    fn an_unqualified_name_is_found_where_sql_finds_it() {
        let db = connection();
        assert_eq!(resolve(&db, "images").unwrap().schema, "aux");
        db.execute_batch("CREATE TABLE main.IMAGES(x)").unwrap();
        let main = resolve(&db, "images").unwrap();
        assert_eq!(
            (main.schema.as_str(), main.table.as_str()),
            ("main", "IMAGES")
        );
        db.execute_batch("CREATE TEMP TABLE images(x)").unwrap();
        assert_eq!(resolve(&db, "images").unwrap().schema, "temp");
        assert_eq!(resolve(&db, "other.images").unwrap().schema, "other");
        assert_eq!(resolve(&db, "\"a.b\"").unwrap().schema, "other");
        assert!(resolve(&db, "a.b").is_err());
        assert!(resolve(&db, "nosuch").is_err());
        assert!(resolve(&db, "main.\"a.b\"").is_err());
    }
}
