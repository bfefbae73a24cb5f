//! The machine's own tests: opcodes, errors, allow-list, cycles and depth.

use std::rc::Rc;

use super::item::Item;
use super::*;
use crate::pth::value::Global;

struct NoPersistent;

impl PersistentLoad for NoPersistent {
    fn load(&mut self, pid: Value) -> Result<Value, String> {
        Err(format!("unexpected persistent id {}", pid.describe()))
    }
}

fn run(bytes: &[u8]) -> Result<Value, PickleError> {
    let mut input = Input::new(bytes, 0, bytes.len() as u64);
    unpickle(&mut input, &mut NoPersistent)
}

#[test]
fn protocol_2_dict_with_memo_and_long() {
    // pickle.dumps({'a': [1, 2**70, -1.5], 'b': (True, None)}, protocol=2)
    let bytes = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01\x8a\t\x00\x00\x00\x00\x00\x00\x00\x00@G\xbf\xf8\x00\x00\x00\x00\x00\x00eX\x01\x00\x00\x00bq\x03\x88N\x86q\x04u.";
    let v = run(bytes).unwrap();
    let a = v.get("a").unwrap().as_seq().unwrap();
    assert_eq!(a[0], Value::Int(1));
    assert_eq!(a[1], Value::Int(1i128 << 70));
    assert_eq!(a[2], Value::Float(-1.5));
    let b = v.get("b").unwrap().as_seq().unwrap();
    assert_eq!(b, &[Value::Bool(true), Value::None]);
}

#[test]
fn protocol_0_text_opcodes() {
    // pickle.dumps({'k': ('s\n', 3, 2.5, u'\u00e9')}, protocol=0)
    let bytes = b"(dp0\nVk\np1\n(Vs\\u000a\np2\nI3\nF2.5\nV\xe9\np3\ntp4\ns.";
    let v = run(bytes).unwrap();
    let t = v.get("k").unwrap().as_seq().unwrap();
    assert_eq!(t[0], Value::Str("s\n".into()));
    assert_eq!(t[1], Value::Int(3));
    assert_eq!(t[2], Value::Float(2.5));
    assert_eq!(t[3], Value::Str("\u{e9}".into()));
    // STRING with escapes (Python 2 str)
    let v = run(b"S'a\\'b\\x41\\n'\np0\n.").unwrap();
    assert_eq!(v, Value::Str("a'bA\n".into()));
}

#[test]
fn unknown_class_becomes_object_with_state() {
    // class C: pass; c = C(); c.x = 5; pickle.dumps(c, protocol=2) (module __main__)
    let bytes = b"\x80\x02c__main__\nC\nq\x00)\x81q\x01}q\x02X\x01\x00\x00\x00xq\x03K\x05sb.";
    let v = run(bytes).unwrap();
    let o = v.as_object().unwrap();
    assert_eq!(o.class.path(), "__main__.C");
    assert_eq!(o.attr("x"), Some(&Value::Int(5)));
    assert_eq!(v.get("x"), Some(&Value::Int(5)));
}

#[test]
fn ordered_dict_and_set_and_bytes() {
    // protocol 2: OrderedDict([('a', 1)]), {3}, b'\x00\xff' via _codecs.encode
    let bytes = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00aq\x02K\x01s\
c__builtin__\nset\nq\x03]q\x04K\x03a\x85q\x05Rq\x06c_codecs\nencode\nq\x07X\x03\x00\x00\x00\x00\xc3\xbfq\x08X\x06\x00\x00\x00latin1q\x09\x86q\x0aRq\x0b\x87q\x0c.";
    let v = run(bytes).unwrap();
    let t = v.as_seq().unwrap();
    assert_eq!(t[0].get("a"), Some(&Value::Int(1)));
    assert_eq!(t[1], Value::Set(vec![Value::Int(3)].into()));
    assert_eq!(t[2], Value::Bytes(vec![0u8, 0xff].into()));
}

#[test]
fn shared_and_recursive_containers() {
    // l = []; l.append(l); pickle.dumps([l, l], protocol=2)
    let bytes = b"\x80\x02]q\x00(]q\x01h\x01ah\x01e.";
    let v = run(bytes).unwrap();
    let outer = v.as_seq().unwrap();
    assert_eq!(outer.len(), 2);
    assert_eq!(outer[0], outer[1]);
    assert_eq!(outer[0].as_seq().unwrap()[0], Value::Recursive);
}

#[test]
fn errors_name_opcode_and_position() {
    let e = run(b"\x80\x02]q\x00").unwrap_err();
    assert!(e.reason.contains("without a STOP"), "{e:?}");
    assert_eq!(e.position, 5);
    let e = run(b"\x80\x02h\x07.").unwrap_err();
    assert_eq!(e.opcode, Some(b'h'));
    assert!(
        e.location().contains("BINGET") && e.location().contains("byte 2"),
        "{}",
        e.location()
    );
    assert!(e.reason.contains("memo entry 7"), "{e:?}");
    let e = run(b"\x80\x02X\xff\xff\xff\x7fabc.").unwrap_err();
    assert!(e.reason.contains("only 4 remain"), "{e:?}");
    let e = run(b"\x80\x02\xfe.").unwrap_err();
    assert!(e.reason.contains("unknown opcode 0xfe"), "{e:?}");
    let e = run(b"\x80\x02u.").unwrap_err();
    assert!(e.reason.contains("MARK"), "{e:?}");
    let e = run(b"\x80\x02NK\x01R.").unwrap_err();
    assert!(e.reason.contains("not a tuple"), "{e:?}");
}

#[test]
fn expected_globals_follow_the_documented_rule() {
    let g = |path: &str| {
        let (m, n) = path.rsplit_once('.').unwrap();
        is_expected_global(&Global::new(m, n))
    };
    for ok in [
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter",
        "torch.FloatStorage",
        "torch.cuda.HalfStorage",
        "torch.storage.UntypedStorage",
        "torch.float32",
        "torch.Size",
        "torch.nn.modules.linear.Linear",
        "torch.nn.parameter.Parameter",
        "torch.optim.adam.Adam",
        "torchvision.models.resnet.Bottleneck",
        "models.Encoder",
        "builtins.set",
        "numpy._core.multiarray.scalar",
        "numpy.dtype",
        "_codecs.encode",
    ] {
        assert!(g(ok), "{ok}");
    }
    for bad in [
        "os.system",
        "posix.system",
        "nt.system",
        "subprocess.Popen",
        "builtins.eval",
        "builtins.exec",
        "builtins.getattr",
        "builtins.__import__",
        "builtins.open",
        "sys.exit",
        "shutil.rmtree",
        "socket.socket",
        "importlib.import_module",
        "pickle.loads",
        "marshal.loads",
        "types.FunctionType",
        "runpy.run_path",
        "webbrowser.open",
        "pty.spawn",
        "code.interact",
        "torch.load",
        "torch.hub.load",
        "torch.nnx.Evil",
        "modelsx.Encoder",
        "__main__.Net",
    ] {
        assert!(!g(bad), "{bad}");
    }
}

#[test]
fn a_self_referencing_list_is_freed() {
    // l = []; l.append(l); with the list also memoised and popped: the VM must empty it at
    // the end, or the cycle (and everything in it) would leak.
    let bytes = b"\x80\x02]q\x002aK\x07a0N.";
    let mut input = Input::new(&bytes[..], 0, bytes.len() as u64);
    let mut weak = None;
    {
        let mut persistent = NoPersistent;
        let mut unexpected = Vec::new();
        let mut vm = Vm::new(&mut persistent, 0, &mut unexpected);
        loop {
            let code = input.u8().unwrap();
            if vm.stack.len() == 1 && weak.is_none() {
                if let Item::List(rc) = &vm.stack[0] {
                    weak = Some(Rc::downgrade(rc));
                }
            }
            if vm.step(code, &mut input).unwrap().is_some() {
                break;
            }
        }
        assert!(
            weak.as_ref().unwrap().upgrade().is_some(),
            "still alive in the VM"
        );
    }
    assert!(weak.unwrap().upgrade().is_none(), "the cycle leaked");
}

#[test]
fn deep_nesting_is_refused() {
    let mut bytes = b"\x80\x02".to_vec();
    bytes.extend(std::iter::repeat_n(b']', 2000));
    bytes.extend(std::iter::repeat_n(b'a', 1999));
    bytes.push(b'.');
    let e = run(&bytes).unwrap_err();
    assert!(e.reason.contains("nested"), "{e:?}");
}
