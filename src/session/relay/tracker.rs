//! What a session is doing, derived from the messages the scanner finds in each direction. No I/O.
//!
//! Owns: the count of Query/Sync/FunctionCall messages not yet answered by ReadyForQuery (pipelining), the
//! transaction status, COPY IN mode, the backend key, Terminate, LISTEN, and the text last executed (with
//! the named prepared statements, see `statements`, that give Bind/Execute of a cached statement its text).

use super::commands::{commands, traced_set, Command};
use super::statements::Statements;
use crate::protocol::messages::{self, backend, frontend, TxStatus};
use crate::protocol::{error_response, scanner::Frame};
use crate::vocab::ConnState;
use std::sync::Arc;

/// Longest statement or portal name PostgreSQL allows (NAMEDATALEN - 1), plus slack.
const NAME_CAP: usize = 128;
/// ParseComplete.
const PARSE_COMPLETE: u8 = b'1';

#[derive(Debug)]
pub struct Tracker {
    /// Messages that each will be answered by one ReadyForQuery; starts at 1 for the startup.
    pending: u32,
    /// The client sent something since the last ReadyForQuery that left nothing pending.
    busy: bool,
    ready_once: bool,
    tx: TxStatus,
    /// Keep this much of a statement's text.
    statement_cap: usize,
    statements: Statements,
    /// Messages sent that each end a batch (answered by one ReadyForQuery), and batches answered; a queued
    /// Parse belongs to batch `sent` as it was when the Parse was sent.
    sent: u64,
    answered: u64,
    unnamed: Option<Arc<[u8]>>,
    bound: Option<Arc<[u8]>>,
    /// The text last executed, shared with the registry once published.
    last_statement: Option<Arc<[u8]>>,
    /// The prepared statement text last executed that carries no command of interest: executing it again
    /// (the same shared text) needs no second look (issue 31: the per-transaction path).
    quiet_sql: Option<Arc<[u8]>>,
    statement_changed: bool,
    /// A trace id a `SET application_name` just carried (taken by the relay for the registry).
    new_trace: Option<Arc<str>>,
    pub queries: u64,
    pub terminated: bool,
    pub server_fatal: bool,
    /// The server is in COPY IN mode, where it ignores Sync (and Flush) until CopyDone or CopyFail.
    copy_in: bool,
    /// Syncs sent since the last Execute: if that Execute starts a COPY IN, the server ignores them.
    syncs_after_execute: u32,
    /// Counting `syncs_after_execute`: an Execute was sent and no CopyDone/CopyFail/Query since.
    after_execute: bool,
    /// CopyDone/CopyFail the client sent before the server's CopyInResponse reached us (pgx sends the data
    /// at once); each one means the next CopyInResponse starts a COPY that is already over.
    copy_ends_ahead: u32,
    /// The session ran LISTEN (so idling is its job, not a leak).
    pub listening: bool,
    pub backend_key: Option<(i32, Vec<u8>)>,
}

impl Tracker {
    /// `statement_cap` is how much statement text to keep; 0 keeps none.
    pub fn new(statement_cap: usize) -> Self {
        Tracker {
            pending: 1,
            busy: false,
            ready_once: false,
            tx: TxStatus::Idle,
            statement_cap,
            statements: Statements::default(),
            sent: 0,
            answered: 0,
            unnamed: None,
            bound: None,
            last_statement: None,
            quiet_sql: None,
            statement_changed: false,
            new_trace: None,
            queries: 0,
            terminated: false,
            server_fatal: false,
            listening: false,
            copy_in: false,
            syncs_after_execute: 0,
            after_execute: false,
            copy_ends_ahead: 0,
            backend_key: None,
        }
    }

    /// The server still owes answers to messages sent after the startup.
    pub fn awaits_answers(&self) -> bool {
        self.ready_once && self.pending > 0
    }

    pub fn state(&self) -> ConnState {
        if !self.ready_once {
            ConnState::Startup
        } else if self.pending > 0 || self.busy {
            ConnState::Active
        } else {
            match self.tx {
                TxStatus::Idle => ConnState::Idle,
                TxStatus::InTransaction => ConnState::IdleInTransaction,
                TxStatus::Failed => ConnState::IdleInFailedTransaction,
            }
        }
    }

    /// How many body bytes of a server message to capture.
    pub fn server_want(tag: u8) -> usize {
        match tag {
            backend::READY_FOR_QUERY => 1,
            backend::BACKEND_KEY_DATA => 4 + crate::protocol::startup::MAX_CANCEL_KEY,
            backend::ERROR_RESPONSE => 64,
            _ => 0,
        }
    }

    pub fn on_client(&mut self, f: Frame<'_>) {
        self.busy = true;
        match f.tag {
            frontend::QUERY => {
                self.after_execute = false;
                self.syncs_after_execute = 0;
                self.batch_sent();
                self.queries += 1;
                let text = messages::cstr(f.body).0;
                self.on_sql(text);
                self.set_statement_text(text);
            }
            frontend::PARSE => {
                let (name, text) = messages::parse_message(f.body);
                if commands(text).any(|c| c == Command::Listen) {
                    self.listening = true;
                }
                if self.statement_cap == 0 {
                    return;
                }
                let text: Arc<[u8]> = Arc::from(&text[..text.len().min(self.statement_cap)]);
                if name.is_empty() {
                    self.unnamed = Some(text);
                } else {
                    self.statements.parse(self.sent, name, text);
                }
            }
            frontend::BIND => {
                let (_portal, stmt) = messages::bind_message(f.body);
                self.bound = if stmt.is_empty() { self.unnamed.clone() } else { self.statements.lookup(stmt) };
            }
            frontend::EXECUTE => {
                self.after_execute = true;
                self.syncs_after_execute = 0;
                self.queries += 1;
                if let Some(text) = self.bound.clone() {
                    if !self.quiet_sql.as_ref().is_some_and(|q| Arc::ptr_eq(q, &text)) && !self.on_sql(&text) {
                        self.quiet_sql = Some(text.clone());
                    }
                    self.set_statement(text);
                }
            }
            frontend::SYNC if self.copy_in => {}
            frontend::SYNC => {
                self.batch_sent();
                if self.after_execute {
                    self.syncs_after_execute += 1;
                }
            }
            frontend::COPY_DONE | frontend::COPY_FAIL => {
                if !self.copy_in {
                    self.copy_ends_ahead += 1;
                }
                self.copy_in = false;
                self.after_execute = false;
            }
            frontend::FUNCTION_CALL => {
                self.batch_sent();
                self.queries += 1;
            }
            frontend::CLOSE => {
                if let Some((b'S', name)) = messages::close_message(f.body) {
                    self.statements.remove(name);
                }
            }
            frontend::TERMINATE => self.terminated = true,
            _ => {}
        }
    }

    /// A message that a ReadyForQuery will answer.
    fn batch_sent(&mut self) {
        self.pending += 1;
        self.sent += 1;
    }

    /// What an executed statement does to the session: LISTEN and its undoing, dropped prepared statements.
    /// Whether it carried any such command.
    fn on_sql(&mut self, text: &[u8]) -> bool {
        let mut any = false;
        for command in commands(text) {
            any = true;
            match command {
                Command::Listen => self.listening = true,
                Command::Unlisten { all: true } => self.listening = false,
                Command::Unlisten { all: false } => {}
                Command::DiscardAll => {
                    self.listening = false;
                    self.statements.remove_all();
                }
                Command::Deallocate(None) => self.statements.remove_all(),
                Command::Deallocate(Some(name)) => self.statements.remove(&name),
            }
        }
        any
    }

    pub fn on_server(&mut self, f: Frame<'_>) {
        match f.tag {
            backend::READY_FOR_QUERY => {
                if self.ready_once {
                    self.answered += 1;
                }
                self.ready_once = true;
                self.pending = self.pending.saturating_sub(1);
                if self.pending == 0 {
                    self.busy = false;
                    // Nothing is owed: a CopyDone sent outside any COPY was only ignored by the server.
                    self.copy_ends_ahead = 0;
                    if let Some(tx) = f.body.first().and_then(|&b| TxStatus::from_byte(b)) {
                        self.tx = tx;
                    }
                }
                self.statements.ready(self.answered, self.pending == 0);
            }
            PARSE_COMPLETE => self.statements.parse_complete(self.answered),
            backend::BACKEND_KEY_DATA => {
                if let Some((pid, key)) = messages::backend_key_data(f.body) {
                    self.backend_key = Some((pid, key.to_vec()));
                }
            }
            backend::COPY_IN_RESPONSE => {
                // Syncs sent after the Execute that started this COPY are ignored by the server.
                let ignored = std::mem::take(&mut self.syncs_after_execute);
                self.pending = self.pending.saturating_sub(ignored);
                self.answered += ignored as u64;
                self.after_execute = false;
                if self.copy_ends_ahead > 0 {
                    self.copy_ends_ahead -= 1;
                } else {
                    self.copy_in = true;
                }
            }
            backend::ERROR_RESPONSE => {
                // An error ends COPY IN mode; the server then waits for a Sync, skipping the rest of the batch.
                self.copy_in = false;
                self.statements.error(self.answered);
                if error_response::parse(f.body).is_fatal() {
                    self.server_fatal = true;
                }
            }
            _ => {}
        }
    }

    /// The statement text, if it changed since the last call (a clone of the shared text: no copy).
    pub fn take_statement(&mut self) -> Option<Arc<[u8]>> {
        if std::mem::take(&mut self.statement_changed) {
            self.last_statement.clone()
        } else {
            None
        }
    }

    /// The statement text kept now (shared, no copy).
    pub fn current_statement(&self) -> Option<Arc<[u8]>> {
        self.last_statement.clone()
    }

    /// The trace id a `SET application_name` carried since the last call.
    pub fn take_trace(&mut self) -> Option<Arc<str>> {
        self.new_trace.take()
    }

    /// A `SET application_name` to a traceparent is the trace, not the evidence statement: its trace id is
    /// kept and the statement before it stays the last one (or what follows it in the same Query is).
    fn traced<'t>(&mut self, text: &'t [u8]) -> Option<&'t [u8]> {
        let (trace, rest) = traced_set(text)?;
        self.new_trace = Some(Arc::from(trace));
        Some(rest)
    }

    /// A Query's text: kept (bounded) unless it is the one already kept, so a statement sent again costs a
    /// comparison, not an allocation and a copy.
    fn set_statement_text(&mut self, mut text: &[u8]) {
        if let Some(rest) = self.traced(text) {
            if rest.is_empty() {
                return;
            }
            text = rest;
        }
        if self.statement_cap == 0 {
            return;
        }
        let text = &text[..text.len().min(self.statement_cap)];
        if self.last_statement.as_deref() != Some(text) {
            self.last_statement = Some(Arc::from(text));
            self.statement_changed = true;
        }
    }

    /// A prepared statement's text (already bounded, shared with the statement cache).
    fn set_statement(&mut self, text: Arc<[u8]>) {
        // Executed again (the same shared text): already kept, and not a traced SET (that is never kept).
        if self.last_statement.as_ref().is_some_and(|last| Arc::ptr_eq(last, &text)) {
            return;
        }
        if let Some(rest) = self.traced(&text) {
            if !rest.is_empty() {
                let rest = Arc::from(rest);
                self.set_statement(rest);
            }
            return;
        }
        let same = match &self.last_statement {
            Some(last) => Arc::ptr_eq(last, &text) || **last == *text,
            None => false,
        };
        if !same {
            self.last_statement = Some(text);
            self.statement_changed = true;
        }
    }
}

/// How many body bytes of a client message to capture when statements are kept up to `cap` bytes.
pub fn client_want(cap: usize, tag: u8) -> usize {
    // Some text is always kept so LISTEN is recognised even with statement text off.
    match tag {
        frontend::QUERY => cap.max(16),
        frontend::PARSE => NAME_CAP + cap.max(16),
        frontend::BIND | frontend::CLOSE => 2 * NAME_CAP,
        _ => 0,
    }
}

/// Whether any statement of `text` is a LISTEN (after leading whitespace and comments).
#[cfg(test)]
fn starts_with_listen(text: &[u8]) -> bool {
    commands(text).any(|c| c == Command::Listen)
}

#[cfg(test)]
mod tests;
