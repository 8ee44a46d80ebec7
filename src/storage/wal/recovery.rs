//! Reading a log back: what may be dropped quietly and what is damage.
//!
//! Records are synced in order and a sync covers all before it, so after a crash only the
//! records of the last, unsynced write can be missing or cut: none of them was acknowledged.
//! That is a torn tail, and only that is dropped. Anything else (a record that passes its
//! checksum but does not decode, or a bad record with intact ones after it) means bytes that
//! were acknowledged have changed: the engine refuses to start and says where, and the
//! operator decides (`streamhost store check|repair`).

use super::record::{self, Bad, Record};

/// What a scan of a log found.
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    /// Intact records before the end or the first bad one.
    pub records: u64,
    /// Where those records end: the length the log keeps.
    pub good_len: u64,
    pub tail: Tail,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Tail {
    /// The log ends with a whole record.
    Clean,
    /// An incomplete or unchecked last write, never acknowledged: `bytes` from `good_len` on.
    Torn {
        bytes: u64,
    },
    Damaged(Damage),
}

/// Damage found at `offset`.
#[derive(Debug, Clone, PartialEq)]
pub struct Damage {
    pub offset: u64,
    pub reason: String,
    /// Intact records found after the damage (each of them acknowledged once).
    pub records_after: u64,
}

/// Reads the records of `data` in order into `apply`, up to the end or the first bad record,
/// and says whether what follows is a torn tail or damage.
pub fn scan(data: &[u8], mut apply: impl FnMut(Record)) -> Scan {
    let mut off = 0;
    let mut records = 0;
    let tail = loop {
        if off == data.len() {
            break Tail::Clean;
        }
        match record::frame_at(data, off) {
            Ok((payload, next)) => match record::decode(payload) {
                Ok(record) => {
                    apply(record);
                    records += 1;
                    off = next;
                }
                Err(e) => {
                    break Tail::Damaged(Damage {
                        offset: off as u64,
                        reason: format!("a record passes its checksum but cannot be read ({e})"),
                        records_after: count_from(data, next),
                    });
                }
            },
            Err(bad) => match next_intact(data, off + 1) {
                // A cut write leaves a short record, or zeros where the file grew but the
                // bytes never arrived; a whole record with a wrong checksum is damage.
                None if bad == Bad::Incomplete || data[off..].iter().all(|&b| b == 0) => {
                    break Tail::Torn {
                        bytes: (data.len() - off) as u64,
                    };
                }
                found => {
                    let what = match bad {
                        Bad::Incomplete => "a record's length runs past the end of the log",
                        Bad::Checksum => "a record does not match its checksum",
                    };
                    break Tail::Damaged(Damage {
                        offset: off as u64,
                        reason: match found {
                            Some(at) => format!(
                                "{what}, and intact records follow it (the first at byte {at})"
                            ),
                            None => format!("{what}, and it is the last record"),
                        },
                        records_after: found.map_or(0, |at| count_from(data, at)),
                    });
                }
            },
        }
    };
    Scan {
        records,
        good_len: off as u64,
        tail,
    }
}

/// The offset of the first intact record at or after `from`.
fn next_intact(data: &[u8], from: usize) -> Option<usize> {
    (from..data.len().saturating_sub(record::HEADER - 1))
        .find(|&at| record::frame_at(data, at).is_ok())
}

/// Counts the intact records from `from` on, stepping over bad stretches.
fn count_from(data: &[u8], from: usize) -> u64 {
    let mut count = 0;
    salvage(data, from, |_, _| count += 1);
    count
}

/// Walks every intact record from `from` on, stepping over bad stretches: `found(offset,
/// payload)` for each record, whether or not its payload decodes. Returns the stretches
/// stepped over, as (offset, bytes).
pub fn salvage(
    data: &[u8],
    from: usize,
    mut found: impl FnMut(usize, &[u8]),
) -> Vec<(usize, usize)> {
    let mut skipped = Vec::new();
    let mut off = from;
    while off < data.len() {
        match record::frame_at(data, off) {
            Ok((payload, next)) => {
                found(off, payload);
                off = next;
            }
            Err(_) => {
                let next = next_intact(data, off + 1).unwrap_or(data.len());
                skipped.push((off, next - off));
                off = next;
            }
        }
    }
    skipped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::wal::record::{RecordRef, encode};
    use serde_json::json;

    fn log(n: usize) -> (Vec<u8>, Vec<usize>) {
        let mut buf = Vec::new();
        let mut starts = Vec::new();
        for k in 0..n {
            starts.push(buf.len());
            let i = format!("item{k}");
            encode(
                &RecordRef::Set {
                    s: "s",
                    g: "g",
                    i: &i,
                    d: &json!({"k": k}).into(),
                },
                &mut buf,
            );
        }
        (buf, starts)
    }

    #[test]
    fn a_whole_log_is_clean() {
        let (data, _) = log(10);
        let scan = scan(&data, |_| {});
        assert_eq!(
            (scan.records, scan.good_len, scan.tail),
            (10, data.len() as u64, Tail::Clean)
        );
    }

    #[test]
    fn a_cut_last_record_is_a_torn_tail_at_every_byte() {
        let (data, starts) = log(5);
        for cut in starts[4] + 1..data.len() {
            let scan = scan(&data[..cut], |_| {});
            assert_eq!(scan.records, 4, "cut at {cut}");
            assert_eq!(
                scan.tail,
                Tail::Torn {
                    bytes: (cut - starts[4]) as u64
                }
            );
        }
        // Zeros where a write extended the file but its bytes never arrived.
        let mut zeros = data.clone();
        zeros.extend_from_slice(&[0; 4096]);
        assert_eq!(scan(&zeros, |_| {}).tail, Tail::Torn { bytes: 4096 });
    }

    #[test]
    fn a_flipped_bit_before_intact_records_is_damage() {
        let (data, starts) = log(100);
        for byte in [
            starts[40] + 2,
            starts[40] + 5,
            starts[40] + 12,
            starts[99] - 1,
        ] {
            let mut bad = data.clone();
            bad[byte] ^= 0x10;
            let scan = scan(&bad, |_| {});
            let Tail::Damaged(damage) = &scan.tail else {
                panic!("byte {byte}: {:?}", scan.tail)
            };
            let hit = starts.iter().rposition(|&s| s <= byte).unwrap();
            assert_eq!(damage.offset, starts[hit] as u64, "byte {byte}");
            assert_eq!(damage.records_after, (99 - hit) as u64, "byte {byte}");
            assert_eq!(scan.records, hit as u64);
        }
        // A whole last record with a wrong checksum is damage too: a cut write is short.
        let mut last = data.clone();
        last[starts[99] + 10] ^= 1;
        let Tail::Damaged(damage) = scan(&last, |_| {}).tail else {
            panic!()
        };
        assert_eq!(
            (damage.offset, damage.records_after),
            (starts[99] as u64, 0)
        );
    }

    #[test]
    fn an_intact_record_that_does_not_decode_is_damage() {
        let (mut data, _) = log(3);
        let payload = br#"{"op":"set","s":1}"#;
        data.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        data.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        data.extend_from_slice(payload);
        let scan = scan(&data, |_| {});
        let Tail::Damaged(damage) = scan.tail else {
            panic!()
        };
        assert!(
            damage.reason.contains("cannot be read"),
            "{}",
            damage.reason
        );
        assert_eq!((scan.records, damage.records_after), (3, 0));
    }

    #[test]
    fn deep_values_replay() {
        let mut deep = json!(1);
        for _ in 0..300 {
            deep = json!([deep]);
        }
        let mut data = Vec::new();
        encode(
            &RecordRef::Set {
                s: "s",
                g: "g",
                i: "i",
                d: &deep.clone().into(),
            },
            &mut data,
        );
        let mut got = None;
        assert_eq!(scan(&data, |r| got = Some(r)).tail, Tail::Clean);
        assert!(matches!(got, Some(Record::Set { d, .. }) if d == deep));
    }
}
