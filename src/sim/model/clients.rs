//! The clients' ends of the model's connections: connect, send (urgent or not), FIN, read, reset,
//! vanish. Whichever layer runs the model drives them; each act raises on the server's socket the
//! edge Linux would raise.

use super::link::{Link, Stage};
use super::Kernel;
use crate::dispatch::{Readiness, Token};
use crate::sim::entropy::Entropy;
use crate::sim::faults::Fault;
use crate::sim::readiness::READABLE;
use crate::sim::trace::Ev;

/// Why a connection attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The listener is closed.
    Closed,
    /// The backlog is full: the SYN is dropped, the client may retry.
    Full,
}

impl<E: Entropy> Kernel<E> {
    /// A client connects: it joins the backlog (the listener gets an edge). `Err` when the
    /// listener is closed (refused) or the backlog is full (the SYN is dropped).
    /// `rcv_cap` and `snd_cap` are the server's buffers, `window` the client's receive buffer.
    pub fn connect(
        &mut self,
        rcv_cap: usize,
        snd_cap: usize,
        write_space: usize,
        window: usize,
    ) -> Result<usize, Refused> {
        if !self.listener.open {
            return Err(Refused::Closed);
        }
        if self.listener.backlog.len() >= self.listener.cap {
            return Err(Refused::Full);
        }
        let link = self.links.len();
        self.links
            .push(Link::new(rcv_cap, snd_cap, write_space, window));
        self.listener.backlog.push_back(link);
        self.raise(Token::LISTENER, READABLE);
        self.note(Ev::Connect(link));
        self.bump();
        Ok(link)
    }

    /// The client sends `bytes` (within its send room). Data for a socket the server closed is
    /// answered with RST.
    pub fn client_send(&mut self, link: usize, bytes: &[u8]) {
        if !self.reset_if_closed(link) {
            self.client_act(link, Ev::ClientSend(link, bytes.len()), |l| l.send(bytes));
        }
    }

    /// The client sends `bytes` with `MSG_OOB`: the last byte is urgent.
    pub fn client_send_urgent(&mut self, link: usize, bytes: &[u8]) {
        if !self.reset_if_closed(link) {
            let ev = Ev::ClientUrgent(link, bytes.len());
            self.client_act(link, ev, |l| l.send_urgent(bytes));
        }
    }

    /// Data for a socket the server closed is answered with RST, which throws away what the
    /// server's kernel had not yet had acknowledged (our FIN too, if it had not landed); what
    /// landed stays readable at the client.
    fn reset_if_closed(&mut self, link: usize) -> bool {
        if self.links[link].stage != Stage::Closed {
            return false;
        }
        if self.fault(Fault::RstSpares) {
            // What was in flight had reached the client, its acknowledgement still on the way.
            let r = self.links[link].land(usize::MAX);
            self.edge(link, r);
        }
        let l = &mut self.links[link];
        l.rst_to_client = true;
        let lost = l.down.queue.len();
        if lost > 0 {
            l.down.queue.clear();
            l.reset_by_server = true;
        }
        if l.down.fin && !l.down.fin_acked {
            // Our FIN had not landed (a full window): the client reads all the echo, then the
            // reset instead of the end of the stream. No echo is lost.
            l.down.fin = false;
            l.fin_destroyed = true;
        }
        self.note(Ev::ResetByServer(link, lost));
        true
    }

    pub fn client_fin(&mut self, link: usize) {
        self.client_act(link, Ev::ClientFin(link), Link::fin);
    }

    /// The client reads up to `max` bytes of echo: what landed, and what lands as it reads.
    pub fn client_recv(&mut self, link: usize, max: usize) -> Vec<u8> {
        self.maybe_land(link);
        let bytes = self.links[link].recv(max);
        if !bytes.is_empty() {
            self.note(Ev::ClientRecv(link, bytes.len()));
            self.links[link].last_active = self.now();
            self.bump();
        }
        // The window opened: more may land.
        self.maybe_land(link);
        bytes
    }

    /// The client reads the server's FIN, if everything before it was read.
    pub fn client_eof(&mut self, link: usize) -> bool {
        self.maybe_land(link);
        let eof = self.links[link].read_eof();
        if eof {
            self.note(Ev::ClientEof(link));
            self.bump();
        }
        eof
    }

    pub fn client_reset(&mut self, link: usize) {
        self.client_act(link, Ev::ClientReset(link), Link::reset);
    }

    pub fn client_vanish(&mut self, link: usize) {
        self.client_act(link, Ev::ClientVanish(link), Link::vanish);
    }

    /// A client acts on its end of `link`; the server's socket gets the edge the act raises.
    fn client_act(&mut self, link: usize, ev: Ev, act: impl FnOnce(&mut Link) -> Readiness) {
        let r = act(&mut self.links[link]);
        self.links[link].last_active = self.now();
        self.note(ev);
        self.edge(link, r);
        self.bump();
    }
}
