//! Fixed-size scalar payloads: SCEN (u64 elapsed_ms), EXIT / SCDX / EXCX
//! (i32 exit codes), and the empty payloads (SCST, SCPP, SCRR, SRDY).
//!
//! Decoding demands the exact length: a short or long payload means the
//! writer and reader disagree about the message, which must not pass as a
//! plausible number.

/// Size of a SCEN payload.
pub const ELAPSED_MS_LEN: usize = 8;
/// Size of an EXIT, SCDX or EXCX payload.
pub const EXIT_CODE_LEN: usize = 4;

/// A scalar payload of the wrong size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScalarError {
    #[error("{what} payload is {got} bytes, expected {expected}")]
    WrongLength {
        what: &'static str,
        expected: usize,
        got: usize,
    },
}

/// SCEN payload: milliseconds the scenario ran.
pub fn encode_elapsed_ms(elapsed_ms: u64) -> [u8; ELAPSED_MS_LEN] {
    elapsed_ms.to_le_bytes()
}

/// Reads a SCEN payload.
pub fn decode_elapsed_ms(payload: &[u8]) -> Result<u64, ScalarError> {
    let bytes = exact::<ELAPSED_MS_LEN>("SCEN elapsed_ms", payload)?;
    Ok(u64::from_le_bytes(bytes))
}

/// EXIT / SCDX / EXCX payload: a process exit code.
pub fn encode_exit_code(code: i32) -> [u8; EXIT_CODE_LEN] {
    code.to_le_bytes()
}

/// Reads an EXIT / SCDX / EXCX payload.
pub fn decode_exit_code(payload: &[u8]) -> Result<i32, ScalarError> {
    let bytes = exact::<EXIT_CODE_LEN>("exit code", payload)?;
    Ok(i32::from_le_bytes(bytes))
}

/// Checks an SCST / SCPP / SCRR / SRDY payload is empty.
pub fn decode_empty(payload: &[u8]) -> Result<(), ScalarError> {
    exact::<0>("empty", payload).map(|_| ())
}

fn exact<const N: usize>(what: &'static str, payload: &[u8]) -> Result<[u8; N], ScalarError> {
    payload.try_into().map_err(|_| ScalarError::WrongLength {
        what,
        expected: N,
        got: payload.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elapsed_ms_round_trip_and_layout() {
        let bytes = encode_elapsed_ms(0x0807_0605_0403_0201);
        assert_eq!(bytes, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(decode_elapsed_ms(&bytes), Ok(0x0807_0605_0403_0201));
        for v in [0, 1, u64::MAX] {
            assert_eq!(decode_elapsed_ms(&encode_elapsed_ms(v)), Ok(v));
        }
    }

    #[test]
    fn exit_code_round_trip_and_layout() {
        assert_eq!(encode_exit_code(-2), [0xFE, 0xFF, 0xFF, 0xFF]);
        for v in [0, 1, -1, i32::MIN, i32::MAX, 137] {
            assert_eq!(decode_exit_code(&encode_exit_code(v)), Ok(v));
        }
    }

    #[test]
    fn wrong_lengths_rejected() {
        assert_eq!(
            decode_elapsed_ms(&[0; 4]),
            Err(ScalarError::WrongLength {
                what: "SCEN elapsed_ms",
                expected: 8,
                got: 4
            })
        );
        assert!(decode_elapsed_ms(&[0; 9]).is_err());
        assert!(decode_exit_code(&[0; 8]).is_err());
        assert!(decode_exit_code(&[]).is_err());
        assert_eq!(decode_empty(&[]), Ok(()));
        let err = decode_empty(&[0]).unwrap_err();
        assert_eq!(err.to_string(), "empty payload is 1 bytes, expected 0");
    }
}
