//! Decodes the messages of PostgreSQL's `pgoutput` logical decoding plugin (protocol version 1)
//! that carry row changes: Relation, Insert, Update, Delete, Truncate.

use bytes::Bytes;

/// One column of a relation as the stream describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct RelationColumn {
    /// Part of the replica identity (the primary key by default).
    pub key: bool,
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// Type modifier (`numeric(10,2)`, `varchar(20)`), -1 when none.
    pub typmod: i32,
}

/// A table's shape, sent before its first change and again after every DDL on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    /// Relation OID.
    pub id: u32,
    /// Schema name.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// Columns in table order.
    pub columns: Vec<RelationColumn>,
}

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq)]
pub enum Datum {
    /// SQL NULL.
    Null,
    /// A TOASTed value that did not change (not sent).
    Unchanged,
    /// The value in the type's text output format.
    Text(Bytes),
}

/// A row change or a relation description.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// The shape of a table.
    Relation(Relation),
    /// A new row.
    Insert {
        /// Relation OID.
        relation: u32,
        /// The row.
        new: Vec<Datum>,
    },
    /// A changed row: `old` is the old key (`key_only`) or the whole old row (REPLICA IDENTITY FULL),
    /// present only when the key changed or the identity is full.
    Update {
        /// Relation OID.
        relation: u32,
        /// The old key or row.
        old: Option<Vec<Datum>>,
        /// Whether `old` holds only the key columns.
        key_only: bool,
        /// The new row.
        new: Vec<Datum>,
    },
    /// A removed row: the old key (`key_only`) or the whole old row.
    Delete {
        /// Relation OID.
        relation: u32,
        /// The old key or row.
        old: Vec<Datum>,
        /// Whether `old` holds only the key columns.
        key_only: bool,
    },
    /// TRUNCATE of these relations.
    Truncate {
        /// Relation OIDs.
        relations: Vec<u32>,
    },
    /// Begin, Commit, Origin, Type, Message: nothing to apply.
    Other(u8),
}

struct Reader<'a> {
    data: &'a Bytes,
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.data.len())
            .ok_or_else(|| format!("pgoutput message truncated at byte {}", self.at))?;
        let s = &self.data[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn cstr(&mut self) -> Result<String, String> {
        let rest = &self.data[self.at..];
        let len = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or("pgoutput string without terminator")?;
        let s = String::from_utf8_lossy(&rest[..len]).into_owned();
        self.at += len + 1;
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Vec<Datum>, String> {
        let n = self.i16()?;
        let mut out = Vec::with_capacity(n.max(0) as usize);
        for _ in 0..n {
            out.push(match self.u8()? {
                b'n' => Datum::Null,
                b'u' => Datum::Unchanged,
                b't' | b'b' => {
                    let len = self.i32()?;
                    if len < 0 {
                        return Err("pgoutput value with negative length".into());
                    }
                    let start = self.at;
                    self.take(len as usize)?;
                    Datum::Text(self.data.slice(start..start + len as usize))
                }
                other => return Err(format!("unknown pgoutput tuple tag {:?}", other as char)),
            });
        }
        Ok(out)
    }
}

/// Decodes one pgoutput message (the payload of an XLogData record).
pub fn decode(data: &Bytes) -> Result<Message, String> {
    let mut r = Reader { data, at: 0 };
    let tag = r.u8()?;
    Ok(match tag {
        b'R' => {
            let id = r.u32()?;
            let namespace = r.cstr()?;
            let name = r.cstr()?;
            let replica_identity = r.u8()?;
            let n = r.i16()?;
            let mut columns = Vec::with_capacity(n.max(0) as usize);
            for _ in 0..n {
                let flags = r.u8()?;
                let name = r.cstr()?;
                let type_oid = r.u32()?;
                let typmod = r.i32()?;
                columns.push(RelationColumn {
                    key: flags & 1 == 1,
                    name,
                    type_oid,
                    typmod,
                });
            }
            Message::Relation(Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'I' => {
            let relation = r.u32()?;
            match r.u8()? {
                b'N' => Message::Insert {
                    relation,
                    new: r.tuple()?,
                },
                t => {
                    return Err(format!(
                        "pgoutput Insert without new tuple (tag {:?})",
                        t as char
                    ))
                }
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let mut old = None;
            let mut key_only = false;
            let mut t = r.u8()?;
            if t == b'K' || t == b'O' {
                key_only = t == b'K';
                old = Some(r.tuple()?);
                t = r.u8()?;
            }
            if t != b'N' {
                return Err(format!(
                    "pgoutput Update without new tuple (tag {:?})",
                    t as char
                ));
            }
            Message::Update {
                relation,
                old,
                key_only,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            let t = r.u8()?;
            if t != b'K' && t != b'O' {
                return Err(format!(
                    "pgoutput Delete without old tuple (tag {:?})",
                    t as char
                ));
            }
            Message::Delete {
                relation,
                old: r.tuple()?,
                key_only: t == b'K',
            }
        }
        b'T' => {
            let n = r.u32()?;
            let _options = r.u8()?;
            let mut relations = Vec::new();
            for _ in 0..n {
                relations.push(r.u32()?);
            }
            Message::Truncate { relations }
        }
        other => Message::Other(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cstr(b: &mut Vec<u8>, s: &str) {
        b.extend_from_slice(s.as_bytes());
        b.push(0);
    }

    #[test]
    fn decodes_relation_and_changes() {
        let mut b = vec![b'R'];
        b.extend_from_slice(&16384u32.to_be_bytes());
        cstr(&mut b, "public");
        cstr(&mut b, "t");
        b.push(b'd');
        b.extend_from_slice(&2i16.to_be_bytes());
        b.push(1);
        cstr(&mut b, "id");
        b.extend_from_slice(&23u32.to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.push(0);
        cstr(&mut b, "name");
        b.extend_from_slice(&25u32.to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        let Message::Relation(rel) = decode(&Bytes::from(b)).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(rel.columns.len(), 2);
        assert!(rel.columns[0].key && !rel.columns[1].key);
        assert_eq!(rel.columns[1].name, "name");

        let mut u = vec![b'U'];
        u.extend_from_slice(&16384u32.to_be_bytes());
        u.push(b'K');
        u.extend_from_slice(&2i16.to_be_bytes());
        u.push(b't');
        u.extend_from_slice(&1i32.to_be_bytes());
        u.push(b'7');
        u.push(b'n');
        u.push(b'N');
        u.extend_from_slice(&2i16.to_be_bytes());
        u.push(b't');
        u.extend_from_slice(&1i32.to_be_bytes());
        u.push(b'8');
        u.push(b'u');
        let m = decode(&Bytes::from(u)).unwrap();
        assert_eq!(
            m,
            Message::Update {
                relation: 16384,
                old: Some(vec![Datum::Text(Bytes::from_static(b"7")), Datum::Null]),
                key_only: true,
                new: vec![Datum::Text(Bytes::from_static(b"8")), Datum::Unchanged],
            }
        );
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        for cut in 0..12 {
            let mut b = vec![b'I'];
            b.extend_from_slice(&1u32.to_be_bytes());
            b.push(b'N');
            b.extend_from_slice(&1i16.to_be_bytes());
            b.push(b't');
            b.extend_from_slice(&100i32.to_be_bytes());
            b.truncate(cut);
            assert!(decode(&Bytes::from(b)).is_err());
        }
    }
}
