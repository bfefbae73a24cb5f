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
    Device::new_cuda(index).map_err(|e| DeviceError::Cuda {
        index,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
