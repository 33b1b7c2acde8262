//! Why masking a response failed. Every variant is a short machine code for the audit event
//! and the debug log; none carries a byte of the message.

use std::fmt;

use phi_guard_common::MaskFailure;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskError {
    /// A record inside a message is cut short or has a bad varint, tag or length.
    Malformed,
    /// A planned field arrived with a wire type its declared type cannot have.
    WireType { field: u32 },
    /// Messages (or groups) nested deeper than the rewriter follows.
    TooDeep,
    /// A gRPC frame announces more than `max_message_bytes`.
    FrameTooLarge,
    /// A gRPC frame's flag byte is neither 0 (plain) nor 1 (compressed).
    BadFlag,
    /// The stream ended inside a gRPC frame.
    TruncatedFrame,
    /// A compressed frame under a `grpc-encoding` other than gzip (or none).
    UnsupportedEncoding,
    /// A gzip frame that does not decompress.
    Decompress,
    /// A gzip frame that decompresses to more than `max_message_bytes`.
    DecompressedTooLarge,
    /// Recompressing the masked message failed.
    Compress,
    /// The free-text scanner could not complete a search.
    Scan,
    /// The response of a masked method is not gRPC (content-type), so it cannot be parsed;
    /// or the request was not a gRPC call.
    NotGrpc,
    /// The method is neither in the descriptor set nor on the pass-through list.
    NoPlan,
}

impl MaskError {
    /// The failure written to `MaskSummary.failure` (the mask contract's closed set).
    pub fn failure(&self) -> MaskFailure {
        match self {
            MaskError::Malformed => MaskFailure::MalformedMessage,
            MaskError::WireType { .. } => MaskFailure::WireTypeMismatch,
            MaskError::TooDeep => MaskFailure::TooDeep,
            MaskError::FrameTooLarge => MaskFailure::FrameTooLarge,
            MaskError::BadFlag => MaskFailure::BadFrameFlag,
            MaskError::TruncatedFrame => MaskFailure::TruncatedFrame,
            MaskError::UnsupportedEncoding => MaskFailure::UnsupportedEncoding,
            MaskError::Decompress => MaskFailure::DecompressFailed,
            MaskError::DecompressedTooLarge => MaskFailure::DecompressedTooLarge,
            MaskError::Compress => MaskFailure::CompressFailed,
            MaskError::Scan => MaskFailure::ScanFailed,
            MaskError::NotGrpc => MaskFailure::NotGrpc,
            MaskError::NoPlan => MaskFailure::NoPlan,
        }
    }

    /// The failure's code, as the audit event and the debug log show it.
    pub fn code(&self) -> &'static str {
        self.failure().as_str()
    }
}

impl fmt::Display for MaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaskError::WireType { field } => write!(f, "{} (field {field})", self.code()),
            _ => f.write_str(self.code()),
        }
    }
}

impl std::error::Error for MaskError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes are the ones the audit event always carried.
    #[test]
    fn codes_are_the_contract_values() {
        let all = [
            (MaskError::Malformed, "malformed_message"),
            (MaskError::WireType { field: 3 }, "wire_type_mismatch"),
            (MaskError::TooDeep, "too_deep"),
            (MaskError::FrameTooLarge, "frame_too_large"),
            (MaskError::BadFlag, "bad_frame_flag"),
            (MaskError::TruncatedFrame, "truncated_frame"),
            (MaskError::UnsupportedEncoding, "unsupported_encoding"),
            (MaskError::Decompress, "decompress_failed"),
            (MaskError::DecompressedTooLarge, "decompressed_too_large"),
            (MaskError::Compress, "compress_failed"),
            (MaskError::Scan, "scan_failed"),
            (MaskError::NotGrpc, "not_grpc"),
            (MaskError::NoPlan, "no_plan"),
        ];
        for (err, code) in all {
            assert_eq!(err.code(), code);
        }
        assert_eq!(
            MaskError::WireType { field: 3 }.to_string(),
            "wire_type_mismatch (field 3)"
        );
    }
}
