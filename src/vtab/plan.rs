//! The planner: which constraints and order xBestIndex pushes down to the shards, and the
//! filter xFilter then reads from the plan.

use super::*;

/// The column of the shard's `images` table that table column `column` is, as SQL names it,
/// for the columns an equality can be pushed down on: every stored one but the key (planned
/// apart) and the image.
pub(super) fn shard_column(config: &TableConfig, column: c_int) -> Option<String> {
    match column {
        COL_NAME | COL_FORMAT | COL_WIDTH | COL_HEIGHT | COL_BYTES | COL_HASH => {
            Some(crate::config::BUILTIN_COLUMNS[column as usize].to_string())
        }
        _ => Some(quote_ident(&user_column(config, column)?.name)),
    }
}

/// The user's column that table column `column` is, if it is one.
pub(super) fn user_column(
    config: &TableConfig,
    column: c_int,
) -> Option<&crate::config::UserColumn> {
    let user = usize::try_from(column - COL_USER_FIRST).ok()?;
    config.user_columns.get(user)
}

/// How SQLite converts the values compared with a column: its declared type's affinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Affinity {
    Numeric,
    Text,
    /// BLOB or no declared type: no conversion of its own.
    Blob,
}

pub(super) fn column_affinity(config: &TableConfig, column: c_int) -> Affinity {
    match column {
        COL_WIDTH | COL_HEIGHT | COL_BYTES => Affinity::Numeric,
        COL_NAME | COL_FORMAT | COL_HASH => Affinity::Text,
        _ => match user_column(config, column) {
            Some(c) if matches!(c.decl_type.as_str(), "INTEGER" | "INT" | "REAL" | "NUMERIC") => {
                Affinity::Numeric
            }
            Some(c) if c.decl_type == "TEXT" => Affinity::Text,
            _ => Affinity::Blob,
        },
    }
}

/// Whether `column = ?` with `value` bound selects in the shard exactly the rows the query's
/// `column = <expression>` selects. The bound value has no affinity, while the expression may
/// have any (a column of another table, a CAST): compared with a TEXT or untyped column, an
/// expression of numeric affinity makes SQLite convert the column's numeric-looking values to
/// numbers, and one of TEXT affinity makes it convert numbers to text. So a number, or a text
/// that looks like one, is pushed down only to a column of numeric affinity; otherwise SQLite's
/// own check of every row decides.
pub(super) fn same_rows_in_shard(affinity: Affinity, value: &Value) -> bool {
    match value {
        _ if affinity == Affinity::Numeric => true,
        Value::Blob(_) => true,
        Value::Text(text) => text.trim().parse::<f64>().is_err(),
        Value::Null | Value::Integer(_) | Value::Real(_) => false,
    }
}

/// The table column numbered as xBestIndex numbers them, by name.
pub(super) fn column_number(config: &TableConfig, name: &str) -> Option<c_int> {
    let builtin = crate::config::BUILTIN_COLUMNS
        .iter()
        .position(|c| *c == name);
    let user = || {
        let at = config.user_columns.iter().position(|c| c.name == name)?;
        Some(COL_USER_FIRST + c_int::try_from(at).ok()?)
    };
    builtin
        .and_then(|at| c_int::try_from(at).ok())
        .or_else(user)
}

/// Every index each shard keeps besides its key, as table column numbers.
pub(super) fn shard_indexes(config: &TableConfig) -> Vec<Vec<c_int>> {
    let declared = config.indexes.iter().map(|columns| {
        columns
            .iter()
            .filter_map(|name| column_number(config, name))
            .collect()
    });
    [vec![COL_HASH], vec![COL_NAME]]
        .into_iter()
        .chain(declared)
        .collect()
}

/// Chooses the plan for xBestIndex. Constraints on `id` are planned in `idx_num`'s bits; the
/// columns of pushed-down equalities are listed in `idx_str` ("3,9"), their values following
/// the id's in xFilter's arguments. No constraint is omitted: SQLite checks every row again.
pub(super) fn plan(info: &mut IndexInfo, config: &TableConfig) {
    let mut id_eq = None;
    let mut lower = None;
    let mut upper = None;
    let mut equal: Vec<(usize, c_int)> = Vec::new();
    for (i, c) in info.constraints().enumerate() {
        if !c.is_usable() {
            continue;
        }
        let on_id = c.column() == COL_ID || c.column() == COL_ROWID;
        let slot = match (c.operator(), on_id) {
            (IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_EQ, true) => &mut id_eq,
            (
                IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_GT
                | IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_GE,
                true,
            ) => &mut lower,
            (
                IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_LT
                | IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_LE,
                true,
            ) => &mut upper,
            (IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_EQ, false) => {
                // A text comparison under another collation (NOCASE, ...) is not the shard's `=`.
                let binary = info
                    .collation(i)
                    .is_ok_and(|c| c.eq_ignore_ascii_case("BINARY"));
                let first = !equal.iter().any(|(_, column)| *column == c.column());
                if binary && first && shard_column(config, c.column()).is_some() {
                    equal.push((i, c.column()));
                }
                continue;
            }
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some((i, c.operator()));
        }
    }
    let mut idx_num = 0;
    let mut argv = 0;
    let mut use_constraint =
        |info: &mut IndexInfo, slot: Option<(usize, IndexConstraintOp)>, bit: c_int| {
            if let Some((i, _)) = slot {
                argv += 1;
                info.constraint_usage(i).set_argv_index(argv);
                idx_num |= bit;
            }
        };
    let lower_bits = match &lower {
        Some((_, IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_GT)) => {
            PLAN_ID_LOWER | PLAN_ID_LOWER_EXCLUSIVE
        }
        _ => PLAN_ID_LOWER,
    };
    let upper_bits = match &upper {
        Some((_, IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_LT)) => {
            PLAN_ID_UPPER | PLAN_ID_UPPER_EXCLUSIVE
        }
        _ => PLAN_ID_UPPER,
    };
    let (has_eq, has_lower, has_upper) = (id_eq.is_some(), lower.is_some(), upper.is_some());
    use_constraint(info, id_eq, PLAN_ID_EQ);
    use_constraint(info, lower, lower_bits);
    use_constraint(info, upper, upper_bits);
    let pushed: Vec<c_int> = equal.iter().map(|(_, column)| *column).collect();
    for (i, _) in &equal {
        argv += 1;
        info.constraint_usage(*i).set_argv_index(argv);
    }
    if !pushed.is_empty() {
        let list: Vec<String> = pushed.iter().map(c_int::to_string).collect();
        info.set_idx_str(&list.join(","));
    }
    // An index whose first column is pushed lets each shard search; if all its columns are,
    // few rows match.
    let searched = shard_indexes(config)
        .iter()
        .filter(|columns| columns.first().is_some_and(|c| pushed.contains(c)))
        .map(|columns| columns.iter().all(|c| pushed.contains(c)))
        .max();

    let shards = config.shard_count() as f64;
    let (cost, rows) = if has_eq {
        (1.0, 1.0)
    } else if let Some(whole) = searched {
        (2.0 * shards, if whole { 1.0 } else { 10.0 })
    } else if has_lower && has_upper {
        (
            shards + TABLE_ROWS_ESTIMATE / 100.0,
            TABLE_ROWS_ESTIMATE / 100.0,
        )
    } else if has_lower || has_upper {
        (
            shards + TABLE_ROWS_ESTIMATE / 4.0,
            TABLE_ROWS_ESTIMATE / 4.0,
        )
    } else if !pushed.is_empty() {
        // Every row is read, but inside the shards; only matches come back.
        (
            shards + TABLE_ROWS_ESTIMATE / 2.0,
            TABLE_ROWS_ESTIMATE / 10.0,
        )
    } else {
        (shards + TABLE_ROWS_ESTIMATE, TABLE_ROWS_ESTIMATE)
    };
    let order: Vec<(c_int, bool)> = info
        .order_bys()
        .map(|o| (o.column(), o.is_order_by_desc()))
        .collect();
    if let [(column, desc)] = order.as_slice() {
        if *column == COL_ID || *column == COL_ROWID {
            info.set_order_by_consumed(true);
            if *desc {
                idx_num |= PLAN_DESCENDING;
            }
        }
    }
    info.set_idx_num(idx_num);
    info.set_estimated_cost(cost);
    info.set_estimated_rows(rows as i64);
}

/// Reads a filter from the plan and xFilter's arguments. A bound on `id` that is not a number
/// is left out (SQLite re-checks every constraint); `None` if no row can match.
pub(super) fn scan_filter(
    config: &TableConfig,
    idx_num: c_int,
    idx_str: Option<&str>,
    args: &Filters<'_>,
) -> Option<ScanFilter> {
    let mut filter = ScanFilter {
        descending: idx_num & PLAN_DESCENDING != 0,
        ..ScanFilter::default()
    };
    let mut next = 0;
    let mut arg = || {
        let v = args.get::<Value>(next).unwrap_or(Value::Null);
        next += 1;
        v
    };
    let number = |v: &Value| match v {
        Value::Integer(i) => Some(*i as f64),
        Value::Real(r) => Some(*r),
        _ => None,
    };
    if idx_num & PLAN_ID_EQ != 0 {
        let v = arg();
        match number(&v) {
            Some(n) if n.fract() != 0.0 => return None,
            Some(_) => {
                filter.id_eq = Some(if let Value::Integer(i) = v {
                    i
                } else {
                    number(&v)? as i64
                })
            }
            None if v == Value::Null => return None,
            None => {}
        }
    }
    if idx_num & PLAN_ID_LOWER != 0 {
        if let Some(n) = number(&arg()) {
            let exclusive = idx_num & PLAN_ID_LOWER_EXCLUSIVE != 0;
            filter.id_min = Some(if exclusive {
                n.floor() as i64 + 1
            } else {
                n.ceil() as i64
            });
        }
    }
    if idx_num & PLAN_ID_UPPER != 0 {
        if let Some(n) = number(&arg()) {
            let exclusive = idx_num & PLAN_ID_UPPER_EXCLUSIVE != 0;
            filter.id_max = Some(if exclusive {
                n.ceil() as i64 - 1
            } else {
                n.floor() as i64
            });
        }
    }
    let pushed = idx_str
        .unwrap_or_default()
        .split(',')
        .filter(|c| !c.is_empty());
    for column in pushed {
        let value = arg();
        if value == Value::Null {
            return None; // `= NULL` is never true
        }
        let Ok(column) = column.parse() else {
            continue;
        };
        if !same_rows_in_shard(column_affinity(config, column), &value) {
            continue;
        }
        if let Some(shard_column) = shard_column(config, column) {
            filter.equal.push((shard_column, value));
        }
    }
    Some(filter)
}
