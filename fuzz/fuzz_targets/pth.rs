//! PyTorch checkpoints (zip and legacy pickle stream): open, walk the object, list the tensors,
//! read each one, and run the tutorial and torchvision extractors.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::Device;
use gaze::pth::{self, Checkpoint};
use libfuzzer_sys::fuzz_target;

/// One tmpfs file per process for the extractor that opens by path.
fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("gaze-fuzz-pth-{}.pth", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let device = Device::Cpu;
    let origin = Path::new("fuzz.pth");
    if let Ok(ckpt) = Checkpoint::from_bytes(data.to_vec(), origin) {
        let _ = ckpt.format().name();
        let _ = ckpt.root().describe();
        let _ = ckpt.training_info();
        if let Ok(named) = ckpt.named_tensors() {
            for (name, t) in &named {
                let _ = t.numel();
                let _ = t.is_contiguous();
                let _ = ckpt.tensor_bytes(t, name);
            }
            let _ = ckpt.load_tensors(&named, true, &device);
        }
        let _ = pth::tutorial_tensors(&ckpt, &device);
    }
    let path = scratch();
    if std::fs::write(path, data).is_ok() {
        let _ = pth::torchvision_resnet_encoder(path, &device);
    }
});
