//! The debug-exit port (0xf4): a guest writes a value there to end the run with a status.
//!
//! This is QEMU's `isa-debug-exit` device. With [`ExitCodeStyle::Plain`] the status is the
//! value written; with [`ExitCodeStyle::Qemu`] it is `(value << 1) | 1`, as QEMU reports it
//! (so a guest written for QEMU keeps its test harness conventions).

use serde::{Deserialize, Serialize};

/// The I/O port of the debug-exit device.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// How a written value becomes the run's exit status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitCodeStyle {
    /// The status is the value.
    #[default]
    Plain,
    /// The status is `(value << 1) | 1`, QEMU's `isa-debug-exit` rule.
    Qemu,
}

/// A guest's request to end the run through the debug-exit port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRequest {
    /// The value the guest wrote (masked to the access size).
    pub value: u32,
    /// The exit status it maps to under the configured [`ExitCodeStyle`].
    pub status: u32,
}

/// The debug-exit device. It has no state of its own: a write is an immediate request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DebugExit {
    style: ExitCodeStyle,
}

impl DebugExit {
    /// A device mapping values to statuses by `style`.
    pub fn new(style: ExitCodeStyle) -> DebugExit {
        DebugExit { style }
    }

    /// The mapping in use.
    pub fn style(&self) -> ExitCodeStyle {
        self.style
    }

    /// A write of `size` bytes (1, 2 or 4; anything else is taken as 4) of `value`.
    pub fn write(&self, size: u8, value: u32) -> ExitRequest {
        let value = match size {
            1 => value & 0xff,
            2 => value & 0xffff,
            _ => value,
        };
        let status = match self.style {
            ExitCodeStyle::Plain => value,
            ExitCodeStyle::Qemu => value.wrapping_shl(1) | 1,
        };
        ExitRequest { value, status }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_qemu_statuses() {
        let plain = DebugExit::new(ExitCodeStyle::Plain);
        assert_eq!(
            plain.write(1, 0x1234),
            ExitRequest {
                value: 0x34,
                status: 0x34
            }
        );
        assert_eq!(
            plain.write(2, 0x12_3456),
            ExitRequest {
                value: 0x3456,
                status: 0x3456
            }
        );
        assert_eq!(
            plain.write(4, 7),
            ExitRequest {
                value: 7,
                status: 7
            }
        );
        let qemu = DebugExit::new(ExitCodeStyle::Qemu);
        assert_eq!(
            qemu.write(1, 0),
            ExitRequest {
                value: 0,
                status: 1
            }
        );
        assert_eq!(
            qemu.write(4, 3),
            ExitRequest {
                value: 3,
                status: 7
            }
        );
        assert_eq!(
            qemu.write(4, u32::MAX).status,
            u32::MAX,
            "no overflow panic"
        );
    }
}
