//! From the pickle's value to tensors: the state dict's `_rebuild_tensor_v2` calls, each
//! checked against the storage bytes the archive really holds before anything is copied.
//!
//! torch's `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
//! backward_hooks[, metadata])` views `storage` (the archive entry `<archive>/data/<key>`,
//! `numel` elements) with a shape and strides; `_rebuild_parameter(tensor, requires_grad,
//! hooks)` wraps one (`torch/_utils.py`).

use candle_core::{DType, Device, Tensor};

use super::value::{Global, Node, Obj};

/// One tensor as the pickle describes it.
#[derive(Debug, Clone)]
pub(crate) struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    /// The storage's archive key (`data/<key>`) and its declared element count.
    pub key: String,
    pub storage_numel: u64,
    pub offset: u64,
    pub size: Vec<u64>,
    pub stride: Vec<u64>,
}

/// The tensors of a state dict (a dict of name → rebuild call). Entries that are not tensors
/// (an `epoch` number, a nested config) are skipped, as `torch.load` + `load_state_dict`
/// would ignore them; a tensor entry that is malformed is an error naming it.
pub(crate) fn tensor_specs(root: &Node) -> Result<Vec<TensorSpec>, String> {
    let Obj::Dict(items) = &root.obj else {
        return Err("the pickle holds no state dict (expected a dict of tensors)".into());
    };
    let mut out = Vec::new();
    for (k, v) in items.iter() {
        let (Obj::Str(name), Obj::Call(g, args)) = (&k.obj, &v.obj) else {
            continue;
        };
        let spec = rebuild(*g, args, name).map_err(|e| format!("tensor `{name}`: {e}"))?;
        out.push(spec);
    }
    Ok(out)
}

fn rebuild(g: Global, args: &[Node], name: &str) -> Result<TensorSpec, String> {
    match g {
        Global::RebuildParameter => match args.first().map(|n| &n.obj) {
            Some(Obj::Call(Global::RebuildTensorV2, inner)) => {
                rebuild(Global::RebuildTensorV2, inner, name)
            }
            _ => Err("_rebuild_parameter of something other than a tensor".into()),
        },
        Global::RebuildTensorV2 => {
            let [storage, offset, size, stride, ..] = args else {
                return Err(format!(
                    "_rebuild_tensor_v2 with {} arguments (expected 6 or 7)",
                    args.len()
                ));
            };
            let Obj::Storage { dtype, key, numel } = &storage.obj else {
                return Err("_rebuild_tensor_v2 without a storage".into());
            };
            let size = ints(size).ok_or("size is not a tuple of non-negative integers")?;
            let stride = ints(stride).ok_or("stride is not a tuple of non-negative integers")?;
            if size.len() != stride.len() {
                return Err(format!(
                    "size {size:?} and stride {stride:?} have different ranks"
                ));
            }
            let offset = match offset.obj {
                Obj::Int(o) if o >= 0 => o as u64,
                _ => return Err("storage offset is not a non-negative integer".into()),
            };
            Ok(TensorSpec {
                name: name.to_string(),
                dtype: *dtype,
                key: key.to_string(),
                storage_numel: *numel,
                offset,
                size,
                stride,
            })
        }
        other => Err(format!("{other:?} is not a tensor rebuild")),
    }
}

fn ints(n: &Node) -> Option<Vec<u64>> {
    let Obj::Tuple(t) = &n.obj else { return None };
    t.iter()
        .map(|x| match x.obj {
            Obj::Int(v) if v >= 0 => Some(v as u64),
            _ => None,
        })
        .collect()
}

impl TensorSpec {
    /// Checks the view against the storage (`storage_bytes`, what the archive entry holds)
    /// without allocating: the storage's declared size must be what the archive holds, and
    /// every element the view reaches must lie inside it.
    pub fn check(&self, storage_bytes: u64) -> Result<(), String> {
        let es = self.dtype.size_in_bytes() as u64;
        let declared = self.storage_numel.checked_mul(es);
        if declared != Some(storage_bytes) {
            return Err(format!(
                "storage `{}` declares {} {:?} elements but the archive holds {storage_bytes} \
                 bytes",
                self.key, self.storage_numel, self.dtype
            ));
        }
        let numel = self
            .size
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("shape {:?} overflows", self.size))?;
        if numel == 0 {
            return Ok(());
        }
        // The last element the view reaches: offset + Σ (size_i − 1)·stride_i.
        let last = self
            .size
            .iter()
            .zip(&self.stride)
            .try_fold(self.offset, |a, (&d, &s)| {
                (d - 1).checked_mul(s).and_then(|x| a.checked_add(x))
            });
        match last {
            Some(l) if l < self.storage_numel => Ok(()),
            _ => Err(format!(
                "shape {:?} with strides {:?} at offset {} reaches past its storage of {} \
                 elements",
                self.size, self.stride, self.offset, self.storage_numel
            )),
        }
    }

    /// The tensor, from its (checked) storage bytes; any strides are gathered.
    pub fn tensor(&self, storage: &[u8]) -> candle_core::Result<Tensor> {
        let es = self.dtype.size_in_bytes();
        let shape: Vec<usize> = self.size.iter().map(|&d| d as usize).collect();
        let numel: usize = shape.iter().product();
        let contiguous = {
            let mut want = 1u64;
            let mut ok = true;
            for (&d, &s) in self.size.iter().zip(&self.stride).rev() {
                ok &= d <= 1 || s == want;
                want *= d;
            }
            ok
        };
        // An empty view reads nothing, wherever its offset points (torch allows an offset past
        // an empty storage; slicing there panicked, found by fuzzing: fuzz/regressions/pickle/).
        if numel == 0 {
            return Tensor::zeros(shape, self.dtype, &Device::Cpu);
        }
        let start = self.offset as usize * es;
        if contiguous {
            return Tensor::from_raw_buffer(
                &storage[start..start + numel * es],
                self.dtype,
                &shape,
                &Device::Cpu,
            );
        }
        let mut out = Vec::with_capacity(numel * es);
        let mut idx = vec![0usize; shape.len()];
        for _ in 0..numel {
            let at = self.offset as usize
                + idx
                    .iter()
                    .zip(&self.stride)
                    .map(|(&i, &s)| i * s as usize)
                    .sum::<usize>();
            out.extend_from_slice(&storage[at * es..(at + 1) * es]);
            // Row-major increment of the index.
            for (i, d) in idx.iter_mut().zip(&shape).rev() {
                *i += 1;
                if *i < *d {
                    break;
                }
                *i = 0;
            }
        }
        Tensor::from_raw_buffer(&out, self.dtype, &shape, &Device::Cpu)
    }
}
