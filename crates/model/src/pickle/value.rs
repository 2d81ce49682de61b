//! The values a pickle builds: plain data, and the few globals it may name.
//!
//! Nothing here can run code: a [`Global`] is a name from a closed list, and a call
//! ([`Obj::Call`]) is recorded, not made. Each [`Node`] caches its depth and the bytes it
//! stands for, so the machine ([`super::vm`]) checks nesting and charges copies in O(1).

use std::rc::Rc;

use candle_core::DType;

/// The only globals a pickle may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Global {
    /// `collections.OrderedDict`: the state dict itself (and `_rebuild_tensor_v2`'s hooks).
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_parameter(tensor, requires_grad, hooks)`: an `nn.Parameter`.
    RebuildParameter,
    /// `torch.FloatStorage` and friends: a storage's element type, named in persistent ids.
    Storage(DType),
}

/// The globals [`Global::lookup`] accepts, for messages.
pub(crate) const ALLOWED: &str = "collections.OrderedDict, torch._utils._rebuild_tensor_v2, \
    torch._utils._rebuild_parameter, torch.{Float,Double,Half,BFloat16,Byte,Long}Storage";

impl Global {
    pub(crate) fn lookup(module: &str, name: &str) -> Option<Self> {
        Some(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch", "FloatStorage") => Global::Storage(DType::F32),
            ("torch", "DoubleStorage") => Global::Storage(DType::F64),
            ("torch", "HalfStorage") => Global::Storage(DType::F16),
            ("torch", "BFloat16Storage") => Global::Storage(DType::BF16),
            ("torch", "ByteStorage") => Global::Storage(DType::U8),
            ("torch", "LongStorage") => Global::Storage(DType::I64),
            _ => return None,
        })
    }
}

/// A pickled value. Containers are reference-counted so that the memo shares them (as
/// Python's memo does) instead of copying.
#[derive(Debug, Clone)]
pub(crate) enum Obj {
    None,
    // No reader needs a bool's or a float's value (`requires_grad`, metadata); they are kept
    // so that a value is represented as the pickle wrote it.
    #[allow(dead_code)]
    Bool(bool),
    Int(i64),
    #[allow(dead_code)]
    Float(f64),
    Str(Rc<str>),
    Tuple(Rc<Vec<Node>>),
    List(Rc<Vec<Node>>),
    Dict(Rc<Vec<(Node, Node)>>),
    Global(Global),
    /// `REDUCE` of an allowed function: the call, not its result.
    Call(Global, Rc<Vec<Node>>),
    /// torch's persistent id `('storage', <StorageType>, key, location, numel)`.
    Storage {
        dtype: DType,
        key: Rc<str>,
        numel: u64,
    },
    Mark,
}

/// A value with its nesting depth and the bytes it stands for (both cached, so that charging
/// a memo copy or checking depth never recurses).
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub obj: Obj,
    pub depth: u32,
    pub bytes: u64,
}

/// What a node costs besides its children: roughly its size in memory.
pub(crate) const NODE_BYTES: u64 = 48;

impl Node {
    pub(crate) fn leaf(obj: Obj) -> Self {
        let extra = match &obj {
            Obj::Str(s) => s.len() as u64,
            Obj::Storage { key, .. } => key.len() as u64,
            _ => 0,
        };
        Self {
            obj,
            depth: 1,
            bytes: NODE_BYTES + extra,
        }
    }

    pub(crate) fn container<'a>(obj: Obj, children: impl Iterator<Item = &'a Node>) -> Self {
        let (mut depth, mut bytes) = (0, NODE_BYTES);
        for c in children {
            depth = depth.max(c.depth);
            bytes += c.bytes;
        }
        Self {
            obj,
            depth: depth + 1,
            bytes,
        }
    }
}
