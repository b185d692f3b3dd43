//! The simulated shell: the worker's [`Io`] over the model of Linux, with the oracle watching.
//!
//! Each call is shown to the oracle before the model answers (what the worker asks for, on what)
//! and after (what the model answered), so the model's answers never depend on the rules and the
//! rules see exactly what the worker saw. Before each wait the world around the kernel acts
//! (clients, time, the stop). Rules broken under a lenient oracle are noted in the trace where
//! they happened.

use std::io;
use std::time::Instant;

use super::entropy::Entropy;
use super::model::{Kernel, SimSocket};
use super::oracle::Oracle;
use super::trace::{Ev, Nanos};
use crate::dispatch::{Readiness, Token};
use crate::io::Io;

/// What happens in the world while the worker waits: clients act, time passes, the stop comes.
pub trait World<E> {
    /// Called at the start of every wait, before the ready list is delivered, with the deadline
    /// the worker asked for (virtual time).
    fn before_wait(&mut self, kernel: &mut Kernel<E>, oracle: &Oracle, deadline: Option<Nanos>);
}

/// A world where nothing happens by itself: the test acts on the kernel between turns.
pub struct Steps;

impl<E> World<E> for Steps {
    fn before_wait(&mut self, _: &mut Kernel<E>, _: &Oracle, _: Option<Nanos>) {}
}

/// The model, the oracle and the world around them, as the worker's [`Io`].
pub struct Sim<E, W> {
    pub kernel: Kernel<E>,
    pub oracle: Oracle,
    pub world: W,
}

impl<E, W> Sim<E, W> {
    /// Lets the oracle judge the model as it stands; notes in the trace what it found broken.
    fn judge<T>(&mut self, rule: impl FnOnce(&mut Oracle, &Kernel<E>) -> T) -> T {
        let verdict = rule(&mut self.oracle, &self.kernel);
        for v in self.oracle.take_unreported() {
            let what = format!("VIOLATION {:?}: {}", v.rule, v.what);
            self.kernel.note(Ev::Note(what));
        }
        verdict
    }

    /// An operation on `sock`: the oracle checks the worker holds it open, then applies `rule`
    /// to its link. Returns the link if it was open.
    fn before_on(
        &mut self,
        sock: &SimSocket,
        what: &str,
        rule: impl FnOnce(&mut Oracle, &Kernel<E>, usize),
    ) -> Option<usize> {
        self.judge(|o, k| {
            let link = o.on_socket(k, sock, what)?;
            rule(o, k, link);
            Some(link)
        })
    }
}

impl<E: Entropy, W: World<E>> Io for Sim<E, W> {
    type Socket = SimSocket;

    fn now(&self) -> Instant {
        self.kernel.instant()
    }

    fn wait(
        &mut self,
        deadline: Option<Instant>,
        mut on_event: impl FnMut(Token, Readiness),
    ) -> io::Result<()> {
        let deadline = deadline.map(|d| self.kernel.virtual_of(d));
        self.world
            .before_wait(&mut self.kernel, &self.oracle, deadline);
        self.judge(Oracle::waited);
        let batch = self.kernel.deliver(deadline);
        if self.judge(|o, k| o.told_events(k, &batch)) {
            let at = self.kernel.now();
            self.kernel.note(Ev::Stop { at });
        }
        for (token, r) in batch {
            on_event(token, r);
        }
        Ok(())
    }

    fn accept(&mut self) -> io::Result<SimSocket> {
        self.judge(|o, k| o.on_listener(k, "accept"));
        let r = self.kernel.accept();
        self.judge(|o, k| o.told_accept(k, &r));
        r
    }

    fn register(&mut self, sock: &SimSocket, token: Token) -> io::Result<()> {
        let open = self.before_on(sock, "register", |o, k, link| o.register(k, link, token));
        let r = self.kernel.register(sock, token);
        if let Some(link) = open {
            self.oracle.told_register(link, &r);
        }
        r
    }

    fn read(&mut self, sock: &SimSocket, buf: &mut [u8]) -> io::Result<usize> {
        let open = self.judge(|o, k| o.on_socket(k, sock, "read"));
        let r = self.kernel.read(sock, buf);
        if let Some(link) = open {
            self.judge(|o, k| o.told_read(k, link, &r));
        }
        r
    }

    fn write(&mut self, sock: &SimSocket, buf: &[u8]) -> io::Result<usize> {
        let open = self.before_on(sock, "write", |o, k, link| o.write(k, link, buf));
        let r = self.kernel.write(sock, buf);
        if let Some(link) = open {
            self.judge(|o, k| o.told_write(k, link, buf, &r));
        }
        r
    }

    fn shutdown_write(&mut self, sock: &SimSocket) {
        self.before_on(sock, "shutdown_write", Oracle::shutdown_write);
        self.kernel.shutdown_write(sock);
    }

    fn close(&mut self, sock: SimSocket) {
        self.before_on(&sock, "close", Oracle::close);
        self.kernel.close(sock);
    }

    fn close_listener(&mut self) {
        self.judge(Oracle::close_listener);
        self.kernel.close_listener();
    }

    fn acked(&mut self, sock: &SimSocket) -> io::Result<u64> {
        let open = self.judge(|o, k| o.on_socket(k, sock, "acked"));
        let r = self.kernel.acked(sock);
        if let Some(link) = open {
            self.judge(|o, k| o.told_acked(k, link));
        }
        r
    }

    fn queued_input(&mut self, sock: &SimSocket) -> io::Result<usize> {
        self.judge(|o, k| o.on_socket(k, sock, "queued_input"));
        self.kernel.queued_input(sock)
    }

    fn queued_connections(&mut self) -> io::Result<usize> {
        self.judge(|o, k| o.on_listener(k, "queued_connections"));
        self.kernel.queued_connections()
    }

    fn close_shell(&mut self) {
        self.judge(Oracle::close_shell);
        self.kernel.close_shell();
    }

    fn clear_wake(&mut self) {
        self.judge(Oracle::clear_wake);
        self.kernel.clear_wake();
    }
}
