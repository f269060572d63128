//! How a connection is refused: a close code and a reason.

use super::*;

/// Why a connection is closed, as sent to the peer.
#[derive(Debug, Clone)]
pub(super) struct Refusal {
    pub(super) code: CloseCode,
    pub(super) reason: String,
}

impl Refusal {
    pub(super) fn new(code: CloseCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }

    pub(super) fn close(&self, conn: &quinn::Connection) {
        // A close reason must fit in one packet.
        let mut end = self.reason.len().min(400);
        while !self.reason.is_char_boundary(end) {
            end -= 1;
        }
        conn.close(self.code.code().into(), &self.reason.as_bytes()[..end]);
        metrics::counter!(names::SESSIONS_CLOSED, "code" => names::close_code_label(self.code))
            .increment(1);
    }
}

pub(super) fn ticket_refusal(error: &TicketError) -> Refusal {
    let code = match error {
        TicketError::Forged => CloseCode::TicketForged,
        TicketError::Expired { .. } => CloseCode::TicketExpired,
        TicketError::WrongMatch { .. } => CloseCode::WrongMatch,
        _ => CloseCode::TicketMalformed,
    };
    Refusal::new(code, error.to_string())
}

pub(super) fn frame_refusal(error: &FrameError) -> Refusal {
    match error {
        FrameError::TooLarge { .. } => Refusal::new(CloseCode::FrameTooLarge, error.to_string()),
        _ => Refusal::new(CloseCode::Malformed, error.to_string()),
    }
}
