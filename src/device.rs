//! Choosing the compute device: `cpu`, `cuda` or `cuda:N`.

use candle_core::Device;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device {0:?}: expected cpu, cuda or cuda:N")]
    Unknown(String),
    #[error(
        "device {0} asked for, but this gaze was built without CUDA (rebuild with --features cuda)"
    )]
    NoCudaBuild(String),
    #[error("cannot open CUDA device {index}: {reason}")]
    Cuda { index: usize, reason: String },
}

/// Parses and opens a device.
pub fn open_device(spec: &str) -> Result<Device, DeviceError> {
    let spec = spec.trim().to_ascii_lowercase();
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let index = match spec.as_str() {
        "cuda" | "gpu" => 0,
        s => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| DeviceError::Unknown(spec.clone()))?,
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(DeviceError::NoCudaBuild(spec));
    }
    Device::new_cuda(index).map_err(|e| {
        let raw = e.to_string();
        let reason = match explain_cuda_error(&raw) {
            Some(hint) => format!("{hint} ({raw})"),
            None => raw,
        };
        DeviceError::Cuda { index, reason }
    })
}

/// How this build runs convolutions on a CUDA device: through cuDNN (built with the `cudnn`
/// feature) or with candle's own im2col kernels. The CPU has gaze's engine either way.
pub fn cuda_convolutions() -> &'static str {
    if cfg!(feature = "cudnn") {
        "cuDNN"
    } else {
        "candle im2col"
    }
}

/// The device as benchmarks print it: the spec, and on a GPU how convolutions run there.
pub fn device_label(spec: &str) -> String {
    if spec.trim().eq_ignore_ascii_case("cpu") {
        spec.to_string()
    } else {
        format!("{spec}, convolutions: {}", cuda_convolutions())
    }
}

/// A sentence for the driver errors that opening a device meets on a machine without a
/// usable GPU; candle reports only the driver's error code.
fn explain_cuda_error(raw: &str) -> Option<&'static str> {
    const HINTS: [(&str, &str); 5] = [
        (
            "CUDA_ERROR_STUB_LIBRARY",
            "the CUDA driver library found is a link-time stub, not the NVIDIA driver",
        ),
        ("CUDA_ERROR_NO_DEVICE", "no NVIDIA GPU was found"),
        (
            "CUDA_ERROR_INSUFFICIENT_DRIVER",
            "the NVIDIA driver is older than the CUDA version gaze was built with",
        ),
        (
            "CUDA_ERROR_INVALID_DEVICE",
            "there is no GPU with this index",
        ),
        (
            "CUDA_ERROR_NOT_INITIALIZED",
            "the NVIDIA driver could not be initialised",
        ),
    ];
    HINTS
        .iter()
        .find(|(code, _)| raw.contains(code))
        .map(|(_, hint)| *hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_the_gpu_convolution_path() {
        assert_eq!(device_label("cpu"), "cpu");
        let expected = if cfg!(feature = "cudnn") {
            "cuda:1, convolutions: cuDNN"
        } else {
            "cuda:1, convolutions: candle im2col"
        };
        assert_eq!(device_label("cuda:1"), expected);
    }

    #[test]
    fn parses_devices() {
        assert!(matches!(open_device("cpu"), Ok(Device::Cpu)));
        assert!(matches!(open_device("tpu"), Err(DeviceError::Unknown(_))));
        assert!(matches!(
            open_device("cuda:x"),
            Err(DeviceError::Unknown(_))
        ));
        if !candle_core::utils::cuda_is_available() {
            let e = open_device("cuda:0").unwrap_err().to_string();
            assert!(e.contains("without CUDA"), "{e}");
        }
    }

    #[test]
    fn driver_errors_get_a_sentence() {
        let raw = r#"DriverError(CUDA_ERROR_NO_DEVICE, "no CUDA-capable device is detected")"#;
        assert_eq!(explain_cuda_error(raw), Some("no NVIDIA GPU was found"));
        assert!(
            explain_cuda_error("DriverError(CUDA_ERROR_STUB_LIBRARY, \"\")")
                .unwrap()
                .contains("stub")
        );
        assert_eq!(explain_cuda_error("out of memory"), None);
    }
}
