//! The globals a checkpoint may name: the allow-list, and the Python 2 names mapped as
//! Python 3's unpickler does.

use std::sync::Arc;

use crate::pth::value::{Global, TorchDType, Value};

/// Python 2 names that Python 3's unpickler maps (`fix_imports`).
pub(super) fn global(module: String, name: String) -> Value {
    let module = match module.as_str() {
        "__builtin__" => "builtins".to_string(),
        "copy_reg" => "copyreg".to_string(),
        _ => module,
    };
    Value::Global(Arc::new(Global { module, name }))
}

/// Whether a global is one a PyTorch checkpoint legitimately names. The rule is an allow-list:
/// - what this reader interprets: `collections.OrderedDict`/`defaultdict`, the builtin
///   containers, `copyreg._reconstructor`, `_codecs.encode`, torch's `_rebuild_*` functions
///   (`torch._utils`, `torch._tensor`), `torch.nn.parameter.Parameter`, numpy scalars;
/// - data types: torch storage classes (`torch.FloatStorage`, `torch.cuda.HalfStorage`,
///   `torch.storage.UntypedStorage`, ...), torch dtypes (`torch.float32`), `torch.Size`,
///   `torch.device`, `numpy.dtype`/`ndarray`/`_reconstruct`, `argparse.Namespace` (training
///   scripts save their arguments), and the builtin scalar types used as `copyreg` bases;
/// - classes of whole pickled models and optimisers: anything under `torch.nn.`,
///   `torch.optim.`, `torchvision.` and the tutorial's `models` module.
///
/// Everything else is unexpected: `os.system`, `posix.*`, `subprocess.*`, `builtins.eval`,
/// `exec`, `getattr`, `__import__`, `open`, `sys.*`, `shutil.*`, `importlib.*`, `pickle.*`,
/// `runpy.*`, other torch functions (`torch.load`, `torch.hub.load`), and classes of the user's
/// own modules (`__main__.Net`), which a file may hold legitimately but which would run code
/// if Python loaded the file. Nothing is called either way.
pub fn is_expected_global(g: &Global) -> bool {
    let (module, name) = (g.module.as_str(), g.name.as_str());
    let under = |prefix: &str| {
        module == prefix
            || module
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('.'))
    };
    if under("torch.nn") || under("torch.optim") || under("torchvision") || under("models") {
        return true;
    }
    match module {
        "collections" => matches!(name, "OrderedDict" | "defaultdict"),
        "builtins" => matches!(
            name,
            "dict"
                | "set"
                | "frozenset"
                | "list"
                | "tuple"
                | "object"
                | "int"
                | "float"
                | "bool"
                | "str"
                | "bytes"
                | "bytearray"
                | "complex"
        ),
        "copyreg" => name == "_reconstructor",
        "_codecs" => name == "encode",
        "argparse" => name == "Namespace",
        "numpy" => matches!(name, "dtype" | "ndarray"),
        "numpy.core.multiarray" | "numpy._core.multiarray" => {
            matches!(name, "scalar" | "_reconstruct")
        }
        "torch._utils" => name.starts_with("_rebuild_"),
        "torch._tensor" | "torch.tensor" => name.starts_with("_rebuild_from_type"),
        "torch" | "torch.cuda" | "torch.storage" => {
            name.ends_with("Storage")
                || (module == "torch"
                    && (matches!(name, "Size" | "device")
                        || TorchDType::from_dtype_name(name).is_some()))
        }
        _ => false,
    }
}

/// Functions whose result is an immutable value computed from their arguments.
pub(super) fn is_value_function(g: &Global) -> bool {
    matches!(
        (g.module.as_str(), g.name.as_str()),
        ("torch._utils", "_rebuild_tensor")
            | ("torch._utils", "_rebuild_tensor_v2")
            | ("torch._utils", "_rebuild_tensor_v3")
            | ("torch._utils", "_rebuild_parameter")
            | ("torch._utils", "_rebuild_parameter_with_state")
            | ("torch.nn.parameter", "Parameter")
            | ("torch._tensor", "_rebuild_from_type_v2")
            | ("torch._tensor", "_rebuild_from_type")
            | ("torch.tensor", "_rebuild_from_type")
            | ("_codecs", "encode")
            | ("numpy.core.multiarray", "scalar")
            | ("numpy._core.multiarray", "scalar")
    )
}
