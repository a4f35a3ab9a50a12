//! The epoch ticker: advances the engine's epoch, the clock that bounds how long a plugin call
//! may run, and only while calls run.
//!
//! A call's deadline is counted in epoch ticks, so the epoch must advance while a call runs.
//! An idle gateway has nothing to bound, and a thread that woke up every tick regardless cost
//! measurable CPU on a busy machine (1,000 wakeups a second per gateway process, each one
//! preempting whatever ran on its core). So the ticker parks once no call has run for
//! [`IDLE_TICKS`] ticks, and the next call to start wakes it.
//!
//! Starting and ending a call each cost one store to a counter of the calling thread's own
//! (no cache line shared between threads is written) and a call's start one read of the
//! parked flag. The ticker reads every thread's counter once per tick.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use wasmtime::Engine;

/// Ticks without any call before the ticker parks.
const IDLE_TICKS: u32 = 50;

/// Calls on every thread that ever made one: each thread's counter is odd while a call runs
/// on it and advances by two per call. An entry whose thread ended (the registry holds the
/// last reference) is dropped at the next look.
static THREADS: Mutex<Vec<Arc<AtomicU64>>> = Mutex::new(Vec::new());

thread_local! {
    static CALLS: Arc<AtomicU64> = {
        let calls = Arc::new(AtomicU64::new(0));
        THREADS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(calls.clone());
        calls
    };
}

/// Advances one engine's epoch every tick while plugin calls run; see the module docs.
pub struct EpochTicker {
    engine: Engine,
    tick: Duration,
    parked: AtomicBool,
    stopped: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

/// A call in progress on this thread; the ticker keeps ticking until it is dropped. Not
/// `Send`: it ends the call on the thread that started it.
pub struct Running {
    /// The counter's value to store at the end; `None` for a call inside another, which the
    /// outer one's end covers.
    end: Option<u64>,
    _thread: std::marker::PhantomData<*const ()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(end) = self.end {
            // Never panics, even while the thread's locals are being torn down.
            let _ = CALLS.try_with(|calls| calls.store(end, Ordering::Release));
        }
    }
}

impl EpochTicker {
    /// Starts the ticker thread of `engine`; it runs until [`EpochTicker::stop`].
    pub fn start(engine: Engine, tick: Duration) -> std::io::Result<Arc<EpochTicker>> {
        let ticker = Arc::new(EpochTicker {
            engine,
            tick,
            parked: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let run = ticker.clone();
        std::thread::Builder::new()
            .name("pgward-epoch".into())
            .spawn(move || run.run())?;
        Ok(ticker)
    }

    /// Marks a call as running on this thread until the guard is dropped, waking the ticker
    /// if it is parked.
    pub fn running(&self) -> Running {
        let end = CALLS.with(|calls| {
            let now = calls.load(Ordering::Relaxed);
            if now % 2 == 1 {
                // Already in a call on this thread.
                return None;
            }
            // SeqCst store, then SeqCst load: paired with the ticker's store of `parked` and
            // its load of the counters, either this call sees the ticker parked (and wakes it)
            // or the ticker sees the call (and does not park).
            calls.store(now + 1, Ordering::SeqCst);
            Some(now + 2)
        });
        if self.parked.load(Ordering::SeqCst) {
            self.unpark();
        }
        Running {
            end,
            _thread: std::marker::PhantomData,
        }
    }

    /// Ends the ticker thread (within a tick).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.unpark();
    }

    /// Whether the ticker is parked (for tests).
    #[cfg(test)]
    pub fn is_parked(&self) -> bool {
        self.parked.load(Ordering::SeqCst)
    }

    fn unpark(&self) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.parked.store(false, Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn run(&self) {
        let mut seen = Vec::new();
        let mut idle = 0;
        while !self.stopped.load(Ordering::SeqCst) {
            std::thread::sleep(self.tick);
            self.engine.increment_epoch();
            if calls_changed(&mut seen) {
                idle = 0;
                continue;
            }
            idle += 1;
            if idle < IDLE_TICKS {
                continue;
            }
            self.parked.store(true, Ordering::SeqCst);
            if calls_changed(&mut seen) {
                self.parked.store(false, Ordering::SeqCst);
                idle = 0;
                continue;
            }
            let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            while self.parked.load(Ordering::SeqCst) && !self.stopped.load(Ordering::SeqCst) {
                guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            idle = 0;
        }
    }
}

/// Whether a call is running on some thread, or one ran since the last look; `seen` holds the
/// counters as last seen.
fn calls_changed(seen: &mut Vec<u64>) -> bool {
    let mut threads = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    threads.retain(|t| Arc::strong_count(t) > 1);
    let mut changed = threads.len() != seen.len();
    seen.resize(threads.len(), 0);
    for (calls, last) in threads.iter().zip(seen.iter_mut()) {
        let now = calls.load(Ordering::SeqCst);
        changed |= now % 2 == 1 || now != *last;
        *last = now;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < until, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// `(module (func (export "spin") (loop (br 0))))`: runs until interrupted.
    const SPIN: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type 0: [] -> []
        0x03, 0x02, 0x01, 0x00, // function 0 has type 0
        0x07, 0x08, 0x01, 0x04, b's', b'p', b'i', b'n', 0x00, 0x00, // export "spin"
        0x0a, 0x09, 0x01, 0x07, 0x00, 0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b, // loop br 0
    ];

    #[test]
    fn the_ticker_parks_when_idle_and_bounds_a_call_however_long_the_idle_was() {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).unwrap();
        let ticker = EpochTicker::start(engine.clone(), Duration::from_millis(1)).unwrap();
        wait_until("the idle ticker parks", || ticker.is_parked());

        // A runaway call after the ticker parked: its deadline (twice the idle period, so the
        // ticker would have parked in the middle of it) still comes.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let spin_engine = engine.clone();
        let call_ticker = ticker.clone();
        std::thread::spawn(move || {
            let module = wasmtime::Module::new(&spin_engine, SPIN).unwrap();
            let mut store = wasmtime::Store::new(&spin_engine, ());
            let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
            let spin = instance
                .get_typed_func::<(), ()>(&mut store, "spin")
                .unwrap();
            let _call = call_ticker.running();
            // A call inside it ends without ending the outer one.
            drop(call_ticker.running());
            store.set_epoch_deadline(2 * u64::from(IDLE_TICKS));
            let trap = spin.call(&mut store, ()).unwrap_err();
            done_tx
                .send(trap.downcast_ref::<wasmtime::Trap>().copied())
                .unwrap();
        });
        let result = done_rx.recv_timeout(Duration::from_secs(10));
        if result.is_err() {
            // Free the spinning thread before failing.
            for _ in 0..1000 {
                engine.increment_epoch();
            }
        }
        assert_eq!(
            result.expect("the runaway call was not interrupted: the epoch stopped"),
            Some(wasmtime::Trap::Interrupt)
        );
        wait_until("the ticker parks again after the call", || {
            ticker.is_parked()
        });

        ticker.stop();
        wait_until("the ticker thread ends", || Arc::strong_count(&ticker) == 1);
    }
}
