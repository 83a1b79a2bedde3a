//! NBD wire constants: magics, and the protocol's codes as newtypes over integers so that
//! an unknown value from a peer survives decoding and can be answered (ERR_UNSUP, EINVAL)
//! instead of being lost. Values from NetworkBlockDevice/nbd doc/proto.md (and its
//! `extension-ext-header` branch for extended headers).

/// `NBDMAGIC`, first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: server greeting's second word and the magic of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;

/// Handshake flags (server → client, 16 bits).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags (client → server, 32 bits).
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags (per export, 16 bits).
pub mod tflags {
    pub const HAS_FLAGS: u16 = 1 << 0;
    pub const READ_ONLY: u16 = 1 << 1;
    pub const SEND_FLUSH: u16 = 1 << 2;
    pub const SEND_FUA: u16 = 1 << 3;
    pub const ROTATIONAL: u16 = 1 << 4;
    pub const SEND_TRIM: u16 = 1 << 5;
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    pub const SEND_DF: u16 = 1 << 7;
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    pub const SEND_RESIZE: u16 = 1 << 9;
    pub const SEND_CACHE: u16 = 1 << 10;
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

macro_rules! code {
    ($(#[$m:meta])* $name:ident($int:ty) { $($(#[$cm:meta])* $c:ident = $v:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub $int);
        impl $name {
            $($(#[$cm])* pub const $c: $name = $name($v);)*
            /// The code's name in the spec, or `None` for a value we do not know.
            pub fn name(self) -> Option<&'static str> {
                match self { $(Self::$c => Some(stringify!($c)),)* _ => None }
            }
        }
        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, "{}({:#x})", stringify!($name), self.0),
                }
            }
        }
    };
}

code! {
    /// `NBD_OPT_*`.
    OptionCode(u32) {
        EXPORT_NAME = 1, ABORT = 2, LIST = 3, PEEK_EXPORT = 4, STARTTLS = 5, INFO = 6, GO = 7,
        STRUCTURED_REPLY = 8, LIST_META_CONTEXT = 9, SET_META_CONTEXT = 10,
        EXTENDED_HEADERS = 11,
    }
}

code! {
    /// `NBD_REP_*`: option reply types; errors have bit 31 set.
    OptionReply(u32) {
        ACK = 1, SERVER = 2, INFO = 3, META_CONTEXT = 4,
        ERR_UNSUP = (1 << 31) + 1, ERR_POLICY = (1 << 31) + 2, ERR_INVALID = (1 << 31) + 3,
        ERR_PLATFORM = (1 << 31) + 4, ERR_TLS_REQD = (1 << 31) + 5, ERR_UNKNOWN = (1 << 31) + 6,
        ERR_SHUTDOWN = (1 << 31) + 7, ERR_BLOCK_SIZE_REQD = (1 << 31) + 8,
        ERR_TOO_BIG = (1 << 31) + 9, ERR_EXT_HEADER_REQD = (1 << 31) + 10,
    }
}

code! {
    /// `NBD_INFO_*`: items of an INFO/GO reply.
    InfoCode(u16) { EXPORT = 0, NAME = 1, DESCRIPTION = 2, BLOCK_SIZE = 3 }
}

code! {
    /// `NBD_CMD_*`.
    Command(u16) {
        READ = 0, WRITE = 1, DISC = 2, FLUSH = 3, TRIM = 4, CACHE = 5, WRITE_ZEROES = 6,
        BLOCK_STATUS = 7, RESIZE = 8,
    }
}

code! {
    /// `NBD_REPLY_TYPE_*`: structured reply chunk types.
    ChunkType(u16) {
        NONE = 0, OFFSET_DATA = 1, OFFSET_HOLE = 2, BLOCK_STATUS = 5, BLOCK_STATUS_EXT = 6,
        ERROR = (1 << 15) + 1, ERROR_OFFSET = (1 << 15) + 2,
    }
}

code! {
    /// `NBD_E*`: error values carried in replies (Linux errno numbers).
    Errno(u32) {
        OK = 0, EPERM = 1, EIO = 5, ENOMEM = 12, EINVAL = 22, ENOSPC = 28, EOVERFLOW = 75,
        ENOTSUP = 95, ESHUTDOWN = 108,
    }
}

/// Command flags (`NBD_CMD_FLAG_*`).
pub mod cflags {
    pub const FUA: u16 = 1 << 0;
    pub const NO_HOLE: u16 = 1 << 1;
    pub const DF: u16 = 1 << 2;
    pub const REQ_ONE: u16 = 1 << 3;
    pub const FAST_ZERO: u16 = 1 << 4;
    pub const PAYLOAD_LEN: u16 = 1 << 5;
}

/// Reply flag: last chunk of a structured or extended reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;

/// `base:allocation` status bits.
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

/// The one metadata context we serve.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// The id we give `base:allocation` when a client selects it.
pub const BASE_ALLOCATION_ID: u32 = 1;

/// Sizes of the fixed headers.
pub const OPTION_HEADER_BYTES: usize = 16;
pub const COMPACT_REQUEST_BYTES: usize = 28;
pub const EXTENDED_REQUEST_BYTES: usize = 32;
pub const SIMPLE_REPLY_BYTES: usize = 16;
pub const STRUCTURED_REPLY_BYTES: usize = 20;
pub const EXTENDED_REPLY_BYTES: usize = 32;

/// Longest string (export name, description, context query) the spec lets either side send.
pub const STRING_BYTES_MAX: usize = 4096;
