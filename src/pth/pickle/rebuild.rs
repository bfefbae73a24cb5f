//! Value functions: torch's tensor and parameter rebuilds, `_codecs.encode` and numpy
//! scalars, applied to frozen arguments.

use std::sync::Arc;

use super::globals::is_value_function;
use crate::pth::value::{Global, StorageRef, TensorRef, TorchDType, Value};

/// Applies a value function; `Ok(None)` where the arguments are not of a form it understands
/// (the call then becomes a generic object).
pub(super) fn call_value(func: &Global, args: &[Value]) -> Result<Option<Value>, String> {
    static NONE: Value = Value::None;
    let arg = |i: usize| args.get(i).unwrap_or(&NONE);
    let need = |n: usize| {
        if args.len() < n {
            Err(format!(
                "{} needs {n} arguments, got {}",
                func.path(),
                args.len()
            ))
        } else {
            Ok(())
        }
    };
    let name = func.name.as_str();
    match name {
        // (storage, offset, size, stride[, requires_grad, hooks[, dtype, ...]]): v2 adds
        // `requires_grad`, v3 the dtype of an untyped storage.
        "_rebuild_tensor" | "_rebuild_tensor_v2" | "_rebuild_tensor_v3" => {
            let v3 = name == "_rebuild_tensor_v3";
            need(if v3 { 7 } else { 4 })?;
            let dtype = if v3 {
                Some(match arg(6) {
                    Value::Global(g) => TorchDType::from_dtype_name(&g.name).ok_or_else(|| {
                        format!("{}: unsupported dtype {}", func.path(), g.path())
                    })?,
                    other => return Err(format!("{}: dtype is {}", func.path(), other.describe())),
                })
            } else {
                None
            };
            let requires_grad = name != "_rebuild_tensor" && arg(4).as_bool().unwrap_or(false);
            Ok(Some(rebuild_tensor(
                func,
                arg(0),
                arg(1),
                arg(2),
                arg(3),
                dtype,
                requires_grad,
            )?))
        }
        "_rebuild_parameter" | "_rebuild_parameter_with_state" | "Parameter" => {
            need(1)?;
            match arg(0) {
                Value::Tensor(t) => {
                    let mut t = t.as_ref().clone();
                    t.parameter = true;
                    if let Some(rg) = arg(1).as_bool() {
                        t.requires_grad = rg;
                    }
                    Ok(Some(Value::Tensor(Arc::new(t))))
                }
                other => Err(format!(
                    "{}: expected a tensor, found {}",
                    func.path(),
                    other.describe()
                )),
            }
        }
        "_rebuild_from_type_v2" | "_rebuild_from_type" => {
            need(3)?;
            let inner = match arg(0) {
                // Not itself again: that would recurse once per level of the arguments.
                Value::Global(g)
                    if is_value_function(g) && !g.name.starts_with("_rebuild_from_type") =>
                {
                    g.clone()
                }
                other => {
                    return Err(format!(
                        "{}: cannot rebuild with {}",
                        func.path(),
                        other.describe()
                    ))
                }
            };
            let inner_args = arg(2)
                .as_seq()
                .ok_or_else(|| format!("{}: arguments are {}", func.path(), arg(2).describe()))?;
            call_value(&inner, inner_args)
        }
        "encode" => match (arg(0), arg(1).as_str()) {
            // Protocol 2 writes Python 3 `bytes` as `_codecs.encode(text, "latin1")`.
            (Value::Str(s), Some("latin1" | "latin-1" | "iso-8859-1")) => {
                let mut out = Vec::with_capacity(s.len());
                for c in s.chars() {
                    let c = u32::from(c);
                    if c > 255 {
                        return Err(format!(
                            "_codecs.encode: character U+{c:04X} is not latin-1"
                        ));
                    }
                    out.push(c as u8);
                }
                Ok(Some(Value::Bytes(out.into())))
            }
            (Value::Str(s), Some("utf-8" | "utf8")) => {
                Ok(Some(Value::Bytes(s.as_bytes().to_vec().into())))
            }
            _ => Ok(None),
        },
        "scalar" => Ok(numpy_scalar(arg(0), arg(1))),
        _ => Ok(None),
    }
}

fn to_usize(v: &Value, what: &str) -> Result<usize, String> {
    match v.as_int() {
        Some(i) if i >= 0 && i <= usize::MAX as i128 => Ok(i as usize),
        _ => Err(format!(
            "{what} is {}, not a non-negative integer",
            v.describe()
        )),
    }
}

fn usize_list(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    let items = match v {
        Value::Object(o) if o.class.is("torch", "Size") => {
            o.args.first().and_then(Value::as_seq).unwrap_or(&[])
        }
        other => other
            .as_seq()
            .ok_or_else(|| format!("{what} is {}, not a tuple", other.describe()))?,
    };
    items.iter().map(|i| to_usize(i, what)).collect()
}

fn rebuild_tensor(
    func: &Global,
    storage: &Value,
    offset: &Value,
    size: &Value,
    stride: &Value,
    dtype: Option<TorchDType>,
    requires_grad: bool,
) -> Result<Value, String> {
    let storage: &StorageRef = match storage {
        Value::Storage(s) => s,
        other => {
            return Err(format!(
                "{}: expected a storage, found {}",
                func.path(),
                other.describe()
            ))
        }
    };
    let dtype = match (dtype, storage.dtype) {
        (Some(d), _) | (None, Some(d)) => d,
        (None, None) => {
            return Err(format!(
                "{}: untyped storage {} and no dtype",
                func.path(),
                storage.key
            ))
        }
    };
    let offset = to_usize(offset, "storage offset")? as u64;
    let shape = usize_list(size, "size")?;
    let stride = usize_list(stride, "stride")?;
    if shape.len() != stride.len() {
        return Err(format!(
            "{}: size {shape:?} and stride {stride:?} differ in rank",
            func.path()
        ));
    }
    if shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .is_none()
    {
        return Err(format!("{}: size {shape:?} overflows", func.path()));
    }
    Ok(Value::Tensor(Arc::new(TensorRef {
        storage: storage.clone(),
        dtype,
        offset,
        shape,
        stride,
        requires_grad,
        parameter: false,
    })))
}

/// `numpy.core.multiarray.scalar(dtype, bytes)`: numpy floats and ints stored in checkpoints
/// (metrics computed with numpy). `None` for dtypes it does not know.
fn numpy_scalar(dtype: &Value, data: &Value) -> Option<Value> {
    let dtype = dtype.as_object()?;
    let code = dtype.args.first()?.as_str()?;
    let bytes: &[u8] = match data {
        Value::Bytes(b) => b,
        _ => return None,
    };
    let big = match dtype.state.as_ref().and_then(Value::as_seq) {
        Some(state) => state.get(1).and_then(Value::as_str) == Some(">"),
        None => false,
    };
    let mut b = bytes.to_vec();
    if big {
        b.reverse();
    }
    Some(match (code, b.len()) {
        ("f8", 8) => Value::Float(f64::from_le_bytes(b.try_into().ok()?)),
        ("f4", 4) => Value::Float(f32::from_le_bytes(b.try_into().ok()?) as f64),
        ("f2", 2) => Value::Float(half::f16::from_le_bytes(b.try_into().ok()?).to_f64()),
        ("i8", 8) => Value::Int(i64::from_le_bytes(b.try_into().ok()?) as i128),
        ("i4", 4) => Value::Int(i32::from_le_bytes(b.try_into().ok()?) as i128),
        ("i2", 2) => Value::Int(i16::from_le_bytes(b.try_into().ok()?) as i128),
        ("i1", 1) => Value::Int(b[0] as i8 as i128),
        ("u8", 8) => Value::Int(u64::from_le_bytes(b.try_into().ok()?) as i128),
        ("u4", 4) => Value::Int(u32::from_le_bytes(b.try_into().ok()?) as i128),
        ("u2", 2) => Value::Int(u16::from_le_bytes(b.try_into().ok()?) as i128),
        ("u1", 1) => Value::Int(b[0] as i128),
        ("b1", 1) => Value::Bool(b[0] != 0),
        _ => return None,
    })
}
