//! [`Tx`]: the writer's transaction, whose tables stay open from their first use to the commit.
//!
//! Opening a redb table in a write transaction looks it up in the database's table of tables,
//! and closing it stages its new root there. An order's writes open some thirty tables in all,
//! and the writer runs a whole group of writes in one transaction, so it keeps each table open
//! across the group instead: [`Tx::open_table`] answers the table opened by an earlier write
//! of the group, and the tables close when the [`Tx`] is dropped, before the commit.
//!
//! A table is lent to one user at a time, as redb lends it: opening a table that is still in
//! use answers [`TableError::TableAlreadyOpen`], as redb would.

use std::{
    cell::{OnceCell, RefCell, RefMut},
    ops::{Deref, DerefMut},
    panic::Location,
};

use redb::{Table, TableDefinition, TableError, TableHandle, Value, WriteTransaction};

/// How many tables of one value type a [`Tx`] keeps open; more are opened and closed at each
/// use, as without a [`Tx`].
const SLOTS: usize = 24;

/// A write transaction that keeps its tables open until it is dropped.
pub(super) struct Tx<'t> {
    txn: &'t WriteTransaction,
    bytes: Slots<'t, &'static [u8]>,
    units: Slots<'t, ()>,
    strs: Slots<'t, &'static str>,
    u64s: Slots<'t, u64>,
    i64s: Slots<'t, i64>,
    bools: Slots<'t, bool>,
}

impl<'t> Tx<'t> {
    pub(super) fn new(txn: &'t WriteTransaction) -> Self {
        Tx {
            txn,
            bytes: Slots::default(),
            units: Slots::default(),
            strs: Slots::default(),
            u64s: Slots::default(),
            i64s: Slots::default(),
            bools: Slots::default(),
        }
    }

    /// The table, opened on its first use in this transaction.
    #[track_caller]
    pub(super) fn open_table<V: Cached>(
        &self,
        def: TableDefinition<'_, &'static str, V>,
    ) -> Result<TableRef<'_, 't, V>, TableError> {
        let name = def.name();
        for slot in &V::slots(self).open {
            let (open, table) = match slot.get() {
                Some(entry) => entry,
                None => {
                    let table = self.txn.open_table(def)?;
                    let _ = slot.set((name.into(), RefCell::new(table)));
                    let Some(entry) = slot.get() else {
                        unreachable!("the slot was just set")
                    };
                    entry
                }
            };
            if &**open == name {
                return table
                    .try_borrow_mut()
                    .map(TableRef::Kept)
                    .map_err(|_| TableError::TableAlreadyOpen(name.into(), Location::caller()));
            }
        }
        self.txn.open_table(def).map(TableRef::Own)
    }
}

/// A table of a [`Tx`], lent until it is dropped.
pub(super) enum TableRef<'a, 't, V: Value + 'static> {
    /// Kept open by the transaction.
    Kept(RefMut<'a, Table<'t, &'static str, V>>),
    /// Opened for this use alone (every slot of its type was taken).
    Own(Table<'t, &'static str, V>),
}

impl<'t, V: Value + 'static> Deref for TableRef<'_, 't, V> {
    type Target = Table<'t, &'static str, V>;

    fn deref(&self) -> &Self::Target {
        match self {
            TableRef::Kept(table) => table,
            TableRef::Own(table) => table,
        }
    }
}

impl<V: Value + 'static> DerefMut for TableRef<'_, '_, V> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self {
            TableRef::Kept(table) => table,
            TableRef::Own(table) => table,
        }
    }
}

/// The open tables of one value type, by name.
pub(super) struct Slots<'t, V: Value + 'static> {
    #[allow(clippy::type_complexity)]
    open: [OnceCell<(Box<str>, RefCell<Table<'t, &'static str, V>>)>; SLOTS],
}

impl<V: Value + 'static> Default for Slots<'_, V> {
    fn default() -> Self {
        Slots {
            open: std::array::from_fn(|_| OnceCell::new()),
        }
    }
}

/// A value type of the store's tables, with its place in a [`Tx`].
pub(super) trait Cached: Value + Sized + 'static {
    fn slots<'a, 't>(tx: &'a Tx<'t>) -> &'a Slots<'t, Self>;
}

macro_rules! cached {
    ($($ty:ty => $field:ident),* $(,)?) => {$(
        impl Cached for $ty {
            fn slots<'a, 't>(tx: &'a Tx<'t>) -> &'a Slots<'t, Self> {
                &tx.$field
            }
        }
    )*};
}

cached! {
    &'static [u8] => bytes,
    () => units,
    &'static str => strs,
    u64 => u64s,
    i64 => i64s,
    bool => bools,
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{backends::InMemoryBackend, Database, ReadableDatabase, ReadableTable};

    const A: TableDefinition<&str, u64> = TableDefinition::new("a");
    const B: TableDefinition<&str, u64> = TableDefinition::new("b");

    fn db() -> Database {
        Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap()
    }

    #[test]
    fn writes_through_a_kept_table_are_committed() {
        let db = db();
        let txn = db.begin_write().unwrap();
        {
            let tx = Tx::new(&txn);
            tx.open_table(A).unwrap().insert("x", 1).unwrap();
            // A later write of the group sees the first one's.
            let mut a = tx.open_table(A).unwrap();
            let x = a.get("x").unwrap().unwrap().value();
            a.insert("x", x + 1).unwrap();
            tx.open_table(B).unwrap().insert("y", 7).unwrap();
        }
        txn.commit().unwrap();
        let read = db.begin_read().unwrap();
        assert_eq!(
            read.open_table(A)
                .unwrap()
                .get("x")
                .unwrap()
                .unwrap()
                .value(),
            2
        );
        assert_eq!(
            read.open_table(B)
                .unwrap()
                .get("y")
                .unwrap()
                .unwrap()
                .value(),
            7
        );
    }

    #[test]
    fn a_table_in_use_is_not_lent_twice() {
        let db = db();
        let txn = db.begin_write().unwrap();
        let tx = Tx::new(&txn);
        let a = tx.open_table(A).unwrap();
        assert!(matches!(
            tx.open_table(A),
            Err(TableError::TableAlreadyOpen(..))
        ));
        // Another table is lent meanwhile.
        tx.open_table(B).unwrap().insert("y", 1).unwrap();
        drop(a);
        tx.open_table(A).unwrap().insert("x", 1).unwrap();
    }

    #[test]
    fn more_tables_than_slots_are_opened_for_each_use() {
        let db = db();
        let names: Vec<&'static str> = (0..SLOTS + 2)
            .map(|i| &*Box::leak(format!("t{i}").into_boxed_str()))
            .collect();
        let txn = db.begin_write().unwrap();
        {
            let tx = Tx::new(&txn);
            for (i, name) in names.iter().enumerate() {
                let def: TableDefinition<&str, u64> = TableDefinition::new(name);
                tx.open_table(def).unwrap().insert("i", i as u64).unwrap();
            }
            let last: TableDefinition<&str, u64> = TableDefinition::new(names[SLOTS + 1]);
            let own = tx.open_table(last).unwrap();
            assert!(matches!(own, TableRef::Own(_)));
        }
        txn.commit().unwrap();
        let read = db.begin_read().unwrap();
        for (i, name) in names.iter().enumerate() {
            let def: TableDefinition<&str, u64> = TableDefinition::new(name);
            let table = read.open_table(def).unwrap();
            assert_eq!(table.get("i").unwrap().unwrap().value(), i as u64);
        }
    }
}
