//! The pickle payloads of the Rust API, made and read without any Python object.
//!
//! - A **job** is `pickle((fn, args))`. `fn` is a reference to a module-level callable, written
//!   as the protocol-4 opcodes `SHORT_BINUNICODE module, SHORT_BINUNICODE qualname, STACK_GLOBAL`;
//!   `args` is serde-pickle's encoding of the Rust arguments, spliced in without its `PROTO` header
//!   and `STOP`. serde-pickle writes no memo and no frame opcodes, so the splice cannot clash with
//!   anything; the stream says protocol 4 so that dotted qualnames (`mod:Class.method`) resolve.
//!   A large byte string among the arguments (`serde_bytes`) travels out of band, as the Python
//!   front end's do: its bytes go into a [`Buffer`] of the job, read in place by a subinterpreter
//!   or passed in shared memory to a process, and the stream holds `bytes(NEXT_BUFFER)` instead
//!   (see [`ArgumentSink`]). It still says protocol 4: the unpickler takes any opcode, and a
//!   protocol-4 job gets its value in band, which is what [`value`] reads.
//! - Already pickled arguments ([`crate::Pool::call_pickled`]) are not spliced: the job holds them as
//!   `bytes` and unpickles them with `pickle.loads` while it is being loaded (a `REDUCE`), so any
//!   protocol, memo or frame inside them is fine.
//! - The **worker setup** is `pickle((None, None, None, None, pickle(init), pickle(retire),
//!   path_prepend))`, see the worker loop's `setup`.
//! - **Exception records** (from `Raised`, `LoadError`, `Broken`) are decoded with
//!   serde-pickle's `Value`: a list of `(pickled_exc, pickling_error, type_name, message,
//!   formatted_traceback, import_name, cause_index, context_index, suppress_context)` ([`records`];
//!   `import_name` is what AUTO's refusal classifier reads, see [`crate::auto`]).

use interpool_worker_types::Buffer;
use serde::{de::DeserializeOwned, Serialize};
use serde_pickle::{DeOptions, SerOptions, Value};

use crate::{Error, PythonError, Result};

const PROTO: u8 = 0x80;
const STOP: u8 = b'.';
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE: u8 = b'X';
const STACK_GLOBAL: u8 = 0x93;
const BINBYTES: u8 = b'B';
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const EMPTY_TUPLE: u8 = b')';
const MARK: u8 = b'(';
const TUPLE: u8 = b't';
const NEXT_BUFFER: u8 = 0x97;
const NONE: u8 = b'N';
const REDUCE: u8 = b'R';

/// A callable named `"module:qualname"`, checked once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target<'a> {
    module: &'a str,
    qualname: &'a str,
}

impl<'a> Target<'a> {
    /// Parses `"package.module:function"` (the qualname may be dotted: `mod:Class.method`).
    pub(crate) fn parse(spec: &'a str) -> Result<Self> {
        let invalid = |why: &str| Error::InvalidTarget {
            target: spec.to_owned(),
            reason: why.to_owned(),
        };
        let (module, qualname) = spec
            .split_once(':')
            .ok_or_else(|| invalid("expected \"module:function\""))?;
        let is_dotted_name = |s: &str| {
            !s.is_empty()
                && s.split('.').all(|part| {
                    !part.is_empty()
                        && !part.starts_with(|c: char| c.is_ascii_digit())
                        && part.chars().all(|c| c == '_' || c.is_alphanumeric())
                })
        };
        if !is_dotted_name(module) {
            return Err(invalid("the module is not a dotted Python name"));
        }
        if !is_dotted_name(qualname) {
            return Err(invalid("the function is not a dotted Python name"));
        }
        Ok(Self { module, qualname })
    }

    /// The opcodes that push this callable (no header, no STOP).
    fn push(&self, out: &mut Vec<u8>) {
        push_str(out, self.module);
        push_str(out, self.qualname);
        out.push(STACK_GLOBAL);
    }

    /// A complete pickle of just this callable (for `init`).
    pub(crate) fn pickle(&self) -> Vec<u8> {
        let mut out = vec![PROTO, 4];
        self.push(&mut out);
        out.push(STOP);
        out
    }
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    match u8::try_from(s.len()) {
        Ok(len) => out.extend([SHORT_BINUNICODE, len]),
        Err(_) => {
            out.push(BINUNICODE);
            // A callable name over 4 GiB is not a thing; saturate rather than panic.
            let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
            out.extend(len.to_le_bytes());
        }
    }
    out.extend(s.as_bytes());
}

/// `bytes` arguments from this size on travel beside the job as out-of-band buffers, at most
/// [`MAX_BUFFERS`] of them: the same rule as the Python front end's (`_outcome.py`).
const BUFFER_THRESHOLD: usize = 256 * 1024;
const MAX_BUFFERS: usize = 64;

/// `BINBYTES` and its little-endian `u32` length: what serde-pickle writes before a byte string
/// of 256 bytes or more.
const BINBYTES_HEADER: usize = 5;

/// serde-pickle's output, with each large byte string (a `serde_bytes` argument) taken out of
/// band as it is written: its `BINBYTES len` header becomes `builtins.bytes(NEXT_BUFFER)`, and its
/// bytes go into a [`Buffer`] of their own instead of the stream. serde-pickle writes a byte
/// string's data in one call right after its header, and nothing else of that size (a string's
/// data follows a `BINUNICODE` header).
struct ArgumentSink {
    out: Vec<u8>,
    buffers: Vec<Buffer>,
}

impl ArgumentSink {
    /// Whether `data` is a byte string whose `BINBYTES` header was the last thing written.
    fn follows_binbytes_header(&self, data: &[u8]) -> bool {
        let Some(start) = self.out.len().checked_sub(BINBYTES_HEADER) else {
            return false;
        };
        let header = &self.out[start..];
        header[0] == BINBYTES
            && u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize
                == data.len()
    }
}

impl std::io::Write for ArgumentSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if data.len() >= BUFFER_THRESHOLD
            && self.buffers.len() < MAX_BUFFERS
            && self.follows_binbytes_header(data)
        {
            self.out.truncate(self.out.len() - BINBYTES_HEADER);
            Target {
                module: "builtins",
                qualname: "bytes",
            }
            .push(&mut self.out);
            self.out.extend([NEXT_BUFFER, TUPLE1, REDUCE]);
            // The one copy of the argument: the call may outlive the caller's borrow.
            let mut copy = Vec::with_capacity(data.len());
            copy.extend_from_slice(data);
            self.buffers.push(Buffer::from_vec(copy).rebuilt_as_bytes());
        } else {
            self.out.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `pickle((fn, args))` with `args` encoded by serde-pickle, and the out-of-band buffers of its
/// large byte strings. `args` should be a tuple (`()` for none, `(x,)` for one); a sequence works
/// too, as Python calls `fn(*args)`.
pub(crate) fn job<A: Serialize>(target: &Target<'_>, args: &A) -> Result<(Vec<u8>, Vec<Buffer>)> {
    let mut sink = ArgumentSink {
        out: Vec::new(),
        buffers: Vec::new(),
    };
    serde_pickle::to_writer(&mut sink, args, SerOptions::new())
        .map_err(|e| Error::Arguments(e.to_string()))?;
    let encoded = sink.out;
    // serde-pickle's stream: PROTO 3, the value's opcodes, STOP.
    let body = encoded
        .strip_prefix(&[PROTO, 3])
        .and_then(|rest| rest.strip_suffix(&[STOP]))
        .ok_or_else(|| Error::Arguments("unexpected pickle framing from serde-pickle".into()))?;
    let mut out = Vec::with_capacity(body.len() + 32);
    out.extend([PROTO, 4]);
    target.push(&mut out);
    // `()` serializes as None: call with no arguments.
    if body == [NONE] {
        out.push(EMPTY_TUPLE);
    } else {
        out.extend(body);
    }
    out.extend([TUPLE2, STOP]);
    Ok((out, sink.buffers))
}

/// `pickle((fn, pickle.loads(pickled_args)))`: the arguments are unpickled in the worker.
pub(crate) fn job_pickled(target: &Target<'_>, pickled_args: &[u8]) -> Result<Vec<u8>> {
    let len = u32::try_from(pickled_args.len())
        .map_err(|_| Error::Arguments("pickled arguments over 4 GiB".into()))?;
    let mut out = Vec::with_capacity(pickled_args.len() + 48);
    out.extend([PROTO, 4]);
    target.push(&mut out);
    Target {
        module: "pickle",
        qualname: "loads",
    }
    .push(&mut out);
    out.push(BINBYTES);
    out.extend(len.to_le_bytes());
    out.extend(pickled_args);
    out.extend([TUPLE1, REDUCE, TUPLE2, STOP]);
    Ok(out)
}

/// `pickle((fn, _interpool_worker._loads_args(pickled_args, *buffers)))`, protocol 5: the
/// arguments are unpickled in the worker with the job's `buffers` out-of-band buffers (the
/// worker loop's helper), and a protocol-5 job gets its value's large buffers out of band too.
pub(crate) fn job_pickled_with_buffers(
    target: &Target<'_>,
    pickled_args: &[u8],
    buffers: usize,
) -> Result<Vec<u8>> {
    let len = u32::try_from(pickled_args.len())
        .map_err(|_| Error::Arguments("pickled arguments over 4 GiB".into()))?;
    let mut out = Vec::with_capacity(pickled_args.len() + 64 + buffers);
    out.extend([PROTO, 5]);
    target.push(&mut out);
    Target {
        module: "_interpool_worker",
        qualname: "_loads_args",
    }
    .push(&mut out);
    out.push(MARK);
    out.push(BINBYTES);
    out.extend(len.to_le_bytes());
    out.extend(pickled_args);
    out.extend(std::iter::repeat_n(NEXT_BUFFER, buffers));
    out.extend([TUPLE, REDUCE, TUPLE2, STOP]);
    Ok(out)
}

/// The worker setup payload.
pub(crate) fn setup(init: Option<&Target<'_>>, path_prepend: &[String]) -> Result<Vec<u8>> {
    let none_callable = Target {
        module: "builtins",
        qualname: "bool",
    };
    let init = init.unwrap_or(&none_callable).pickle();
    let config = Value::Tuple(vec![
        Value::None,
        Value::None,
        Value::None,
        Value::None,
        Value::Bytes(init),
        Value::Bytes(none_callable.pickle()),
        Value::List(path_prepend.iter().cloned().map(Value::String).collect()),
    ]);
    serde_pickle::value_to_vec(&config, SerOptions::new()).map_err(|e| Error::Setup(e.to_string()))
}

/// Reads a pickled result as `R`.
pub(crate) fn value<R: DeserializeOwned>(pickled: &[u8]) -> Result<R> {
    serde_pickle::from_slice(pickled, DeOptions::new()).map_err(|e| Error::Conversion {
        rust_type: std::any::type_name::<R>(),
        reason: e.to_string(),
    })
}

/// One decoded exception record.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) pickled: Option<Vec<u8>>,
    /// `module.qualname` of the exception's class (`builtins.ImportError`).
    pub(crate) type_name: String,
    /// `str()` of the exception.
    pub(crate) message: String,
    pub(crate) traceback: String,
    /// For an `ImportError` (or a subclass): its `name` attribute, `""` when unset; `None` for
    /// any other exception.
    pub(crate) import_name: Option<String>,
    /// The record of `__cause__`.
    pub(crate) cause: Option<usize>,
    /// The record of `__context__`.
    pub(crate) context: Option<usize>,
    pub(crate) suppress_context: bool,
}

/// Decodes pickled exception records, the raised exception first; `None` if they are not
/// records (or there are none).
pub(crate) fn records(pickled: &[u8]) -> Option<Vec<Record>> {
    serde_pickle::value_from_slice(pickled, DeOptions::new())
        .ok()
        .and_then(|v| match v {
            Value::List(items) => items.into_iter().map(record).collect::<Option<Vec<_>>>(),
            _ => None,
        })
        .filter(|records| !records.is_empty())
}

fn record(value: Value) -> Option<Record> {
    let Value::Tuple(fields) = value else {
        return None;
    };
    let [pickled, _pickling_error, type_name, message, traceback, import_name, cause, context, suppress]: [Value;
        9] = fields.try_into().ok()?;
    let string = |v: Value| match v {
        Value::String(s) => Some(s),
        _ => None,
    };
    let index = |v: Value| match v {
        Value::I64(i) => usize::try_from(i).ok(),
        _ => None,
    };
    Some(Record {
        pickled: match pickled {
            Value::Bytes(b) => Some(b),
            _ => None,
        },
        type_name: string(type_name)?,
        message: string(message)?,
        traceback: string(traceback)?,
        import_name: string(import_name),
        cause: index(cause),
        context: index(context),
        suppress_context: matches!(suppress, Value::Bool(true)),
    })
}

/// `builtins.ValueError` → `ValueError`; other modules keep their name.
fn short_type_name(name: &str) -> String {
    name.strip_prefix("builtins.").unwrap_or(name).to_owned()
}

/// The traceback of record `i` with its chain, as Python prints it.
fn chained_traceback(records: &[Record], i: usize, seen: &mut Vec<usize>) -> String {
    if seen.contains(&i) {
        return String::new();
    }
    seen.push(i);
    let Some(r) = records.get(i) else {
        return String::new();
    };
    let mut text = String::new();
    if let Some(cause) = r.cause {
        let earlier = chained_traceback(records, cause, seen);
        if !earlier.is_empty() {
            text.push_str(&earlier);
            text.push_str(
                "\nThe above exception was the direct cause of the following exception:\n\n",
            );
        }
    } else if let (Some(context), false) = (r.context, r.suppress_context) {
        let earlier = chained_traceback(records, context, seen);
        if !earlier.is_empty() {
            text.push_str(&earlier);
            text.push_str(
                "\nDuring handling of the above exception, another exception occurred:\n\n",
            );
        }
    }
    text.push_str(&r.traceback);
    text
}

/// Decodes exception records into the error of the first (the raised) exception.
pub(crate) fn exception(records: &[u8]) -> PythonError {
    match self::records(records) {
        Some(records) => {
            let traceback = chained_traceback(&records, 0, &mut Vec::new());
            let first = &records[0];
            PythonError {
                type_name: short_type_name(&first.type_name),
                message: first.message.clone(),
                traceback,
                pickled: first.pickled.clone(),
            }
        }
        None => PythonError {
            type_name: "UnknownError".to_owned(),
            message: format!(
                "the exception records ({} bytes) could not be decoded",
                records.len()
            ),
            traceback: String::new(),
            pickled: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked() {
        assert!(Target::parse("os.path:join").is_ok());
        assert!(Target::parse("mod:Class.method").is_ok());
        for bad in ["nocolon", ":f", "m:", "m:1f", "a..b:f", "m:f(x)"] {
            assert!(
                matches!(Target::parse(bad), Err(Error::InvalidTarget { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_job_is_one_pickle_stream_with_a_global_and_the_spliced_arguments() {
        let target = Target::parse("operator:add").unwrap();
        let (payload, buffers) = job(&target, &(2i64, 3i64)).unwrap();
        assert!(buffers.is_empty());
        assert_eq!(&payload[..2], &[PROTO, 4]);
        assert_eq!(payload[2..].first(), Some(&SHORT_BINUNICODE));
        assert!(payload.ends_with(&[TUPLE2, STOP]));
        // serde-pickle reads it back as (global, (2, 3)) once globals are tolerated.
        let value =
            serde_pickle::value_from_slice(&payload, DeOptions::new().replace_unresolved_globals())
                .unwrap();
        assert_eq!(
            value,
            Value::Tuple(vec![
                Value::None,
                Value::Tuple(vec![Value::I64(2), Value::I64(3)])
            ])
        );
    }

    #[test]
    fn unit_arguments_become_an_empty_tuple() {
        let target = Target::parse("m:f").unwrap();
        let (payload, _) = job(&target, &()).unwrap();
        assert!(payload.ends_with(&[STACK_GLOBAL, EMPTY_TUPLE, TUPLE2, STOP]));
    }

    /// What `serde_bytes` does: a byte string, not a list of integers.
    struct Bytes<'a>(&'a [u8]);

    impl Serialize for Bytes<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    #[test]
    fn large_byte_strings_travel_out_of_band_and_small_ones_in_band() {
        let target = Target::parse("m:f").unwrap();
        let large = vec![7u8; BUFFER_THRESHOLD];
        let small = vec![9u8; BUFFER_THRESHOLD - 1];
        let (payload, buffers) = job(
            &target,
            &(Bytes(&large), 5i64, Bytes(&small), Bytes(&large)),
        )
        .unwrap();
        assert_eq!(buffers.len(), 2, "each large byte string is a buffer");
        assert!(buffers.iter().all(|b| b.as_slice() == large.as_slice()));
        assert!(
            payload.len() < small.len() + 200,
            "only the small one is in the stream"
        );
        // Each is `bytes(NEXT_BUFFER)` in the stream.
        let bytes_of_buffer = [
            &[SHORT_BINUNICODE, 8][..],
            b"builtins",
            &[SHORT_BINUNICODE, 5],
            b"bytes",
            &[STACK_GLOBAL, NEXT_BUFFER, TUPLE1, REDUCE],
        ]
        .concat();
        let found = payload
            .windows(bytes_of_buffer.len())
            .filter(|w| *w == bytes_of_buffer.as_slice())
            .count();
        assert_eq!(found, 2);
    }

    #[test]
    fn undecodable_records_still_give_an_error() {
        let e = exception(b"not a pickle");
        assert_eq!(e.type_name, "UnknownError");
    }
}
