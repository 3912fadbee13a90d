//! The shapes the generated table is made of (see `scripts/gen-commands.py`).

/// One command (or subcommand, named `container|sub`) as Redis describes it.
#[derive(Debug)]
pub struct CommandSpec {
    pub name: &'static str,
    /// Redis arity: positive is exact, negative is "at least".
    pub arity: i16,
    /// `F_*` bits from COMMAND INFO flags.
    pub flags: u64,
    /// `ACL_*` bits from COMMAND INFO ACL categories.
    pub acl: u64,
    pub group: super::table::Group,
    /// `TIP_*` bits.
    pub tips: u8,
    pub key_specs: &'static [KeySpec],
    pub subcommands: &'static [CommandSpec],
}

pub const TIP_NONDETERMINISTIC_OUTPUT: u8 = 1 << 0;
pub const TIP_NONDETERMINISTIC_OUTPUT_ORDER: u8 = 1 << 1;

#[derive(Debug)]
pub struct KeySpec {
    /// `KS_*` bits.
    pub flags: u32,
    pub begin: BeginSearch,
    pub find: FindKeys,
}

#[derive(Debug)]
pub enum BeginSearch {
    Index(i32),
    Keyword {
        keyword: &'static str,
        start_from: i32,
    },
    Unknown,
}

#[derive(Debug)]
pub enum FindKeys {
    Range {
        last_key: i32,
        step: i32,
        limit: i32,
    },
    KeyNum {
        keynum_idx: i32,
        first_key: i32,
        step: i32,
    },
    Unknown,
}
