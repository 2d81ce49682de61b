//! A pickle *reader*, not an unpickler: it runs the opcodes `torch.save` emits as a stack
//! machine over plain data, and nothing else.
//!
//! Python's `pickle.load` imports whatever `GLOBAL` names and calls whatever `REDUCE` applies
//! it to, which is how a `.bin` file runs `os.system`. Here:
//! - `GLOBAL` / `STACK_GLOBAL` only *name* one of [`Global`]'s values (the ones torch's
//!   `_rebuild_tensor_v2` path needs, as the pickles `torch.save` writes contain); any other
//!   name is refused with the name, before anything else happens.
//! - `REDUCE` records the call as data ([`Obj::Call`]) for [`super::torch`] to interpret;
//!   only `collections.OrderedDict()` is evaluated (to an empty dict).
//! - `INST`, `OBJ`, `NEWOBJ`, `EXT*`, persistent ids other than torch's storage tuples and
//!   every opcode torch does not write are refused.
//!
//! Resources are bounded before they are used: a string's declared length is checked against
//! the bytes that remain, every object created or copied out of the memo is charged to a byte
//! budget, and nesting deeper than [`limits::PICKLE_DEPTH`] is refused (it would otherwise
//! overflow the stack when dropped).
//!
//! Opcode reference: CPython `Lib/pickletools.py`; what torch writes: `torch/serialization.py`
//! `_save` (protocol 2) and `torch/_weights_only_unpickler.py`, whose allow-list this narrows.

use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

use super::value::{Global, Node, Obj, ALLOWED, NODE_BYTES};

/// Why a pickle was refused; `at` is the opcode's byte offset in `data.pkl`.
#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    #[error(
        "the pickle names the global `{module}.{name}` (byte {at}), which is not one torch's \
         tensor rebuilding needs; refused without running anything (allowed: {ALLOWED})"
    )]
    Global {
        module: String,
        name: String,
        at: usize,
    },
    #[error("opcode {op:#04x} {name}(byte {at}) is not one torch.save writes; refused")]
    Opcode { op: u8, name: OpName, at: usize },
    #[error("the pickle ends inside an opcode (byte {at}); the file is truncated")]
    Truncated { at: usize },
    #[error("byte {at}: {msg}")]
    Malformed { at: usize, msg: String },
    #[error(
        "the pickle nests deeper than {limit} levels (byte {at}); refused (set \
         SIGHTLINE_MAX_PICKLE_DEPTH to raise it)"
    )]
    Depth { at: usize, limit: u64 },
    #[error(
        "the pickle builds more than {limit} bytes of objects (byte {at}); refused (a state \
         dict needs a few times its pickle's size; set SIGHTLINE_MAX_PICKLE_BYTES to raise it)"
    )]
    Budget { at: usize, limit: u64 },
    #[error("the pickle has no STOP opcode")]
    NoStop,
}

/// An opcode's pickletools name, when it has one (for messages).
#[derive(Debug)]
pub struct OpName(&'static str);

impl fmt::Display for OpName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, "({}) ", self.0)
        }
    }
}

fn op_name(op: u8) -> OpName {
    OpName(match op {
        b'i' => "INST",
        b'o' => "OBJ",
        0x81 => "NEWOBJ",
        0x92 => "NEWOBJ_EX",
        0x82..=0x84 => "EXT",
        b'P' => "PERSID",
        b'c' => "GLOBAL",
        b'S' | b'T' | b'U' => "STRING",
        b'B' | b'C' | 0x8e => "BYTES",
        b'I' | b'L' => "INT/LONG (text)",
        b'F' => "FLOAT (text)",
        0x8b => "LONG4",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x96..=0x98 => "BYTEARRAY/BUFFER",
        b'0' | b'1' | b'2' => "POP/DUP",
        _ => "",
    })
}

/// Limits for one pickle.
pub(crate) struct Budget {
    /// Bytes of objects the pickle may create (copies out of the memo included).
    pub bytes: u64,
    pub depth: u64,
}

/// Runs `data` (a whole `data.pkl`) and returns the value its `STOP` returns.
pub(crate) fn run(data: &[u8], budget: &Budget) -> Result<Node, PickleError> {
    Machine {
        data,
        pos: 0,
        op_at: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        spent: 0,
        budget,
    }
    .run()
}

struct Machine<'a> {
    // `take` hands out slices of `data` that outlive the borrow of the machine.
    data: &'a [u8],
    pos: usize,
    /// Where the current opcode starts (for messages).
    op_at: usize,
    stack: Vec<Node>,
    memo: HashMap<u32, Node>,
    spent: u64,
    budget: &'a Budget,
}

impl<'a> Machine<'a> {
    fn run(mut self) -> Result<Node, PickleError> {
        while self.pos < self.data.len() {
            self.op_at = self.pos;
            let op = self.take(1)?[0];
            if op == b'.' {
                return self.pop();
            }
            self.step(op)?;
        }
        Err(PickleError::NoStop)
    }

    /// Executes one opcode. Kept whole on purpose (177 lines): one short arm per opcode, so
    /// that everything the reader accepts (and the `_` arm that refuses the rest) can be
    /// checked against the pickle protocol in one place.
    fn step(&mut self, op: u8) -> Result<(), PickleError> {
        match op {
            0x80 => {
                // PROTO n: torch writes 2; 3-5 only add opcodes handled below.
                let v = self.take(1)?[0];
                if v > 5 {
                    return Err(self.malformed(format!("unknown pickle protocol {v}")));
                }
            }
            0x95 => {
                // FRAME: a length hint for buffered readers; we hold the whole pickle already.
                self.take(8)?;
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.global(&module, &name)?;
            }
            0x93 => {
                // STACK_GLOBAL: module and name are the two strings on top of the stack.
                let name = self.pop()?;
                let module = self.pop()?;
                match (&module.obj, &name.obj) {
                    (Obj::Str(m), Obj::Str(n)) => {
                        let (m, n) = (m.to_string(), n.to_string());
                        self.global(&m, &n)?
                    }
                    _ => return Err(self.malformed("STACK_GLOBAL without two strings")),
                }
            }
            b'N' => self.push_leaf(Obj::None)?,
            0x88 => self.push_leaf(Obj::Bool(true))?,
            0x89 => self.push_leaf(Obj::Bool(false))?,
            b'K' => {
                let v = self.take(1)?[0];
                self.push_leaf(Obj::Int(v.into()))?
            }
            b'M' => {
                let b = self.take(2)?;
                let v = u16::from_le_bytes([b[0], b[1]]);
                self.push_leaf(Obj::Int(v.into()))?
            }
            b'J' => {
                let b = self.take(4)?;
                let v = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                self.push_leaf(Obj::Int(v.into()))?
            }
            0x8a => {
                // LONG1: n little-endian two's-complement bytes; more than 8 is not a size.
                let n = self.take(1)?[0] as usize;
                if n > 8 {
                    return Err(self.malformed(format!("a {n}-byte integer")));
                }
                let b = self.take(n)?;
                let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                    [0xff; 8]
                } else {
                    [0; 8]
                };
                buf[..n].copy_from_slice(b);
                self.push_leaf(Obj::Int(i64::from_le_bytes(buf)))?
            }
            b'G' => {
                let b = self.take(8)?;
                let mut buf = [0; 8];
                buf.copy_from_slice(b);
                self.push_leaf(Obj::Float(f64::from_be_bytes(buf)))?
            }
            b'X' => {
                let b = self.take(4)?;
                let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
                self.string(n)?
            }
            0x8c => {
                let n = self.take(1)?[0] as usize;
                self.string(n)?
            }
            b'(' => self.push_leaf(Obj::Mark)?,
            b')' => self.push_container(Obj::Tuple(Rc::new(Vec::new())))?,
            b']' => self.push_container(Obj::List(Rc::new(Vec::new())))?,
            b'}' => self.push_container(Obj::Dict(Rc::new(Vec::new())))?,
            b't' => {
                let items = self.pop_to_mark()?;
                self.push_tuple(items)?
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if self.stack.len() < n {
                    return Err(self.malformed("TUPLE1-3 on a short stack"));
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push_tuple(items)?
            }
            b'a' => {
                let v = self.pop()?;
                self.extend_list(vec![v])?
            }
            b'e' => {
                let items = self.pop_to_mark()?;
                self.extend_list(items)?
            }
            b'd' => {
                let items = self.pop_to_mark()?;
                let pairs = pairs(items).ok_or_else(|| self.malformed("DICT with odd items"))?;
                let node = Node::container(
                    Obj::Dict(Rc::new(Vec::new())),
                    pairs.iter().flat_map(|(k, v)| [k, v]),
                );
                let node = Node {
                    obj: Obj::Dict(Rc::new(pairs)),
                    ..node
                };
                self.push_node(node)?
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.extend_dict(vec![(k, v)])?
            }
            b'u' => {
                let items = self.pop_to_mark()?;
                let pairs =
                    pairs(items).ok_or_else(|| self.malformed("SETITEMS with odd items"))?;
                self.extend_dict(pairs)?
            }
            b'q' => {
                let id = self.take(1)?[0].into();
                self.memo_put(id)?
            }
            b'r' => {
                let b = self.take(4)?;
                self.memo_put(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))?
            }
            0x94 => {
                let id =
                    u32::try_from(self.memo.len()).map_err(|_| self.malformed("memo overflow"))?;
                self.memo_put(id)?
            }
            b'h' => {
                let id = self.take(1)?[0].into();
                self.memo_get(id)?
            }
            b'j' => {
                let b = self.take(4)?;
                self.memo_get(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))?
            }
            b'Q' => {
                let pid = self.pop()?;
                let storage = self.storage(pid)?;
                self.push_leaf(storage)?
            }
            b'R' => {
                let args = self.pop()?;
                let f = self.pop()?;
                self.reduce(f, args)?
            }
            b'b' => {
                // BUILD: `obj.__setstate__(state)`. torch's OrderedDict state dicts carry a
                // `_metadata` attribute this way; attributes are not items, so it is dropped.
                let _state = self.pop()?;
                match self.stack.last() {
                    Some(Node {
                        obj: Obj::Dict(_), ..
                    }) => {}
                    _ => return Err(self.malformed("BUILD on something other than a dict")),
                }
            }
            other => {
                return Err(PickleError::Opcode {
                    op: other,
                    name: op_name(other),
                    at: self.op_at,
                })
            }
        }
        Ok(())
    }

    fn malformed(&self, msg: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            at: self.op_at,
            msg: msg.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or(PickleError::Truncated { at: self.op_at })?;
        let data: &'a [u8] = self.data;
        self.pos = end;
        Ok(&data[end - n..end])
    }

    /// A text line (GLOBAL's operands), without its newline.
    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated { at: self.op_at })?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    fn global(&mut self, module: &str, name: &str) -> Result<(), PickleError> {
        match Global::lookup(module, name) {
            Some(g) => self.push_leaf(Obj::Global(g)),
            None => Err(PickleError::Global {
                module: module.to_string(),
                name: name.to_string(),
                at: self.op_at,
            }),
        }
    }

    fn string(&mut self, n: usize) -> Result<(), PickleError> {
        // `take` checks the length against what is left before anything is allocated.
        let b = self.take(n)?;
        let s = std::str::from_utf8(b)
            .map(Rc::<str>::from)
            .map_err(|_| self.malformed("a string that is not UTF-8"))?;
        self.push_leaf(Obj::Str(s))
    }

    fn charge(&mut self, bytes: u64) -> Result<(), PickleError> {
        self.spent = self.spent.saturating_add(bytes);
        if self.spent > self.budget.bytes {
            return Err(PickleError::Budget {
                at: self.op_at,
                limit: self.budget.bytes,
            });
        }
        Ok(())
    }

    fn push_node(&mut self, node: Node) -> Result<(), PickleError> {
        if u64::from(node.depth) > self.budget.depth {
            return Err(PickleError::Depth {
                at: self.op_at,
                limit: self.budget.depth,
            });
        }
        self.stack.push(node);
        Ok(())
    }

    fn push_leaf(&mut self, obj: Obj) -> Result<(), PickleError> {
        let node = Node::leaf(obj);
        self.charge(node.bytes)?;
        self.push_node(node)
    }

    fn push_container(&mut self, obj: Obj) -> Result<(), PickleError> {
        self.charge(NODE_BYTES)?;
        self.push_node(Node::container(obj, std::iter::empty()))
    }

    fn push_tuple(&mut self, items: Vec<Node>) -> Result<(), PickleError> {
        self.charge(NODE_BYTES)?;
        let node = Node::container(Obj::Tuple(Rc::new(Vec::new())), items.iter());
        self.push_node(Node {
            obj: Obj::Tuple(Rc::new(items)),
            ..node
        })
    }

    fn pop(&mut self) -> Result<Node, PickleError> {
        self.stack
            .pop()
            .ok_or_else(|| self.malformed("pop from an empty stack"))
    }

    fn pop_to_mark(&mut self) -> Result<Vec<Node>, PickleError> {
        let mark = self
            .stack
            .iter()
            .rposition(|n| matches!(n.obj, Obj::Mark))
            .ok_or_else(|| self.malformed("no MARK"))?;
        let items = self.stack.split_off(mark + 1);
        self.stack.pop();
        Ok(items)
    }

    /// APPEND(S) into the list on top of the stack.
    fn extend_list(&mut self, items: Vec<Node>) -> Result<(), PickleError> {
        self.charge_copy_of_top(|o| matches!(o, Obj::List(_)), "APPEND to a non-list")?;
        let Some(top) = self.stack.last_mut() else {
            return Err(self.malformed("APPEND to an empty stack"));
        };
        if let Obj::List(list) = &mut top.obj {
            let list = Rc::make_mut(list);
            for x in items {
                top.depth = top.depth.max(x.depth + 1);
                top.bytes = top.bytes.saturating_add(x.bytes);
                list.push(x);
            }
        }
        let depth = u64::from(top.depth);
        self.check_depth(depth)
    }

    /// SETITEM(S) into the dict on top of the stack.
    fn extend_dict(&mut self, pairs: Vec<(Node, Node)>) -> Result<(), PickleError> {
        self.charge_copy_of_top(|o| matches!(o, Obj::Dict(_)), "SETITEM on a non-dict")?;
        let Some(top) = self.stack.last_mut() else {
            return Err(self.malformed("SETITEM on an empty stack"));
        };
        if let Obj::Dict(dict) = &mut top.obj {
            let dict = Rc::make_mut(dict);
            for (k, v) in pairs {
                top.depth = top.depth.max(k.depth.max(v.depth) + 1);
                top.bytes = top.bytes.saturating_add(k.bytes + v.bytes);
                dict.push((k, v));
            }
        }
        let depth = u64::from(top.depth);
        self.check_depth(depth)
    }

    /// Checks that the top of the stack is the container `is` wants and, when the memo shares
    /// it, charges the copy that mutating it makes (`Rc::make_mut`): without the charge, a
    /// pickle that memoizes a list under a new id before each APPEND would keep every
    /// intermediate copy, quadratic in its length.
    fn charge_copy_of_top(&mut self, is: fn(&Obj) -> bool, what: &str) -> Result<(), PickleError> {
        let (shared, bytes) = match self.stack.last() {
            Some(top) if is(&top.obj) => {
                let shared = match &top.obj {
                    Obj::List(l) => Rc::strong_count(l) > 1,
                    Obj::Dict(d) => Rc::strong_count(d) > 1,
                    _ => false,
                };
                (shared, top.bytes)
            }
            _ => return Err(self.malformed(what)),
        };
        if shared {
            self.charge(bytes)?;
        }
        Ok(())
    }

    fn check_depth(&self, depth: u64) -> Result<(), PickleError> {
        if depth > self.budget.depth {
            return Err(PickleError::Depth {
                at: self.op_at,
                limit: self.budget.depth,
            });
        }
        Ok(())
    }

    fn memo_put(&mut self, id: u32) -> Result<(), PickleError> {
        let top = self
            .stack
            .last()
            .cloned()
            .ok_or_else(|| self.malformed("memo put from an empty stack"))?;
        // The memo's copy shares the containers (an `Rc`); it costs one node.
        self.charge(NODE_BYTES)?;
        self.memo.insert(id, top);
        Ok(())
    }

    fn memo_get(&mut self, id: u32) -> Result<(), PickleError> {
        let node = self
            .memo
            .get(&id)
            .cloned()
            .ok_or_else(|| self.malformed(format!("memo entry {id} was never put")))?;
        // Charged in full: a later APPEND/SETITEM on it copies it (`Rc::make_mut`), and a
        // pickle that fetches a big object many times is a memory bomb either way.
        self.charge(node.bytes)?;
        self.push_node(node)
    }

    /// torch's persistent id: `('storage', torch.XStorage, key, location, numel)`.
    fn storage(&self, pid: Node) -> Result<Obj, PickleError> {
        let bad = || {
            self.malformed(
                "a persistent id that is not torch's ('storage', <Storage>, key, location, \
                 numel)",
            )
        };
        let Obj::Tuple(t) = &pid.obj else {
            return Err(bad());
        };
        match t.as_slice() {
            [tag, ty, key, _location, numel] => match (&tag.obj, &ty.obj, &key.obj, &numel.obj) {
                (
                    Obj::Str(tag),
                    Obj::Global(Global::Storage(dtype)),
                    Obj::Str(key),
                    Obj::Int(n),
                ) if &**tag == "storage" && *n >= 0 => Ok(Obj::Storage {
                    dtype: *dtype,
                    key: key.clone(),
                    numel: *n as u64,
                }),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }

    fn reduce(&mut self, f: Node, args: Node) -> Result<(), PickleError> {
        let Obj::Tuple(args) = args.obj else {
            return Err(self.malformed("REDUCE with arguments that are not a tuple"));
        };
        match f.obj {
            Obj::Global(Global::OrderedDict) if args.is_empty() => {
                self.push_container(Obj::Dict(Rc::new(Vec::new())))
            }
            Obj::Global(g @ (Global::RebuildTensorV2 | Global::RebuildParameter)) => {
                self.charge(NODE_BYTES)?;
                let node = Node::container(Obj::Tuple(Rc::new(Vec::new())), args.iter());
                self.push_node(Node {
                    obj: Obj::Call(g, args),
                    ..node
                })
            }
            Obj::Global(g) => Err(self.malformed(format!("REDUCE calls {g:?} with arguments"))),
            _ => Err(self.malformed("REDUCE of something that is not an allowed global")),
        }
    }
}

fn pairs(items: Vec<Node>) -> Option<Vec<(Node, Node)>> {
    if !items.len().is_multiple_of(2) {
        return None;
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Some(out)
}
