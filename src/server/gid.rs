//! The identifier (gid) of a shard's prepared transaction on its server:
//! `imagestore:<table id>:<txid>:<shard index>:<participants>`.
//!
//! The table id lets recovery find a table's own among the server's (`pg_prepared_xacts`). The
//! participants (the shards the transaction wrote, as a bit mask in hex: bit i is shard i, the
//! hex of its little-endian bytes with trailing zero digits left off) travel with the prepare
//! itself, durable with it: so that, with the anchor's decision rows lost, recovery can tell a
//! transaction some participant never prepared (its writer died in the vote, so it was never
//! decided) from one in doubt. A gid made by an older build ends at the shard index, and says
//! nothing of the participants. A gid is at most 11 + 32 + 1 + 20 + 1 + 3 + 1 + 64 = 133
//! characters (a server takes 199), of `[0-9a-f:]` only: safe as an SQL literal.

use crate::config::SHARD_COUNT_MAX;
use crate::journal::TableId;
use crate::shard::hex;

/// What a gid of a table names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub txid: u64,
    pub shard: usize,
    /// `None` for a gid of an older build.
    pub participants: Option<Vec<u16>>,
}

/// The gids of table `table` start with this.
pub fn table_prefix(table: &TableId) -> String {
    format!("imagestore:{}:", hex(table))
}

/// The gid of shard `shard`'s part of transaction `txid`, which wrote `participants`.
pub fn make(table: &TableId, txid: u64, shard: usize, participants: &[u16]) -> String {
    let mut mask = [0u8; SHARD_COUNT_MAX / 8];
    for &p in participants {
        if let Some(byte) = mask.get_mut(usize::from(p) / 8) {
            *byte |= 1 << (p % 8);
        }
    }
    let digits = hex(&mask);
    format!(
        "{}{txid}:{shard}:{}",
        table_prefix(table),
        digits.trim_end_matches('0')
    )
}

/// The gid an older build gave shard `shard`'s part of `txid` (no participants).
pub fn without_participants(table: &TableId, txid: u64, shard: usize) -> String {
    format!("{}{txid}:{shard}", table_prefix(table))
}

/// What `gid` names, if it is a gid of table `table`.
pub fn parse(table: &TableId, gid: &str) -> Option<Named> {
    let rest = gid.strip_prefix(&table_prefix(table))?;
    let mut parts = rest.split(':');
    let txid = parts.next()?.parse().ok()?;
    let shard = parts.next()?.parse().ok()?;
    let participants = match parts.next() {
        None => None,
        Some(mask) => Some(participants_of(mask)?),
    };
    match parts.next() {
        Some(_) => None,
        None => Some(Named {
            txid,
            shard,
            participants,
        }),
    }
}

/// The shards of a mask's hex digits.
fn participants_of(mask: &str) -> Option<Vec<u16>> {
    if mask.len() > SHARD_COUNT_MAX / 4 || !mask.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut digits = mask.to_string();
    if digits.len() % 2 == 1 {
        digits.push('0');
    }
    let mut shards = Vec::new();
    for (i, pair) in digits.as_bytes().chunks(2).enumerate() {
        let byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        shards.extend(
            (0..8u16)
                .filter(|bit| byte & (1 << bit) != 0)
                .map(|bit| i as u16 * 8 + bit),
        );
    }
    Some(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: TableId = [0xab; 16];

    #[test]
    fn a_gid_names_its_transaction_shard_and_participants() {
        for participants in [
            vec![0],
            vec![0, 1, 3],
            vec![4],
            vec![7, 8],
            vec![1, 200, 255],
        ] {
            let gid = make(&TABLE, 42, 3, &participants);
            assert!(
                gid.len() <= 133
                    && gid
                        .bytes()
                        .all(|b| b == b':' || b.is_ascii_hexdigit() || b.is_ascii_lowercase()),
                "{gid}"
            );
            let named = parse(&TABLE, &gid).unwrap();
            assert_eq!(
                named,
                Named {
                    txid: 42,
                    shard: 3,
                    participants: Some(participants)
                }
            );
        }
        assert_eq!(
            make(&TABLE, 7, 0, &[0, 1, 3]),
            format!("imagestore:{}:7:0:0b", hex(&TABLE))
        );
    }

    #[test]
    fn an_older_gid_names_no_participants_and_others_are_not_the_tables() {
        let old = without_participants(&TABLE, 9, 1);
        assert_eq!(
            parse(&TABLE, &old),
            Some(Named {
                txid: 9,
                shard: 1,
                participants: None
            })
        );
        assert_eq!(parse(&[0xcd; 16], &old), None);
        for bad in ["x", ":9:1", "9:1:zz", "9:1:1:1", "9", "9:x"] {
            assert_eq!(
                parse(&TABLE, &format!("{}{bad}", table_prefix(&TABLE))),
                None,
                "{bad}"
            );
        }
    }
}
