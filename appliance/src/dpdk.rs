//! The DPDK boundary: the only module with `unsafe`. It turns EAL, ports,
//! mempools, mbufs, hand-off queues and lcore launch into a small safe API that the
//! worker loop and the control thread use.

use dpdk_sys as sys;
use std::ffi::{c_void, CStr, CString};
use std::fmt;

#[derive(Debug)]
pub struct DpdkError(pub String);

impl fmt::Display for DpdkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for DpdkError {}

/// rte_errno's text, for error messages.
fn errno_text(code: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local string.
    unsafe { CStr::from_ptr(sys::rte_strerror(code)) }.to_string_lossy().into_owned()
}

fn last_error(what: &str) -> DpdkError {
    // SAFETY: reading a thread-local errno through the shim.
    let code = unsafe { sys::ringlb_errno() };
    if code == 0 {
        // Some EAL failures do not set rte_errno; EAL's own log says why.
        return DpdkError(format!("{what} (no rte_errno set; see the EAL messages above)"));
    }
    DpdkError(format!("{what}: {} (rte_errno {code})", errno_text(code)))
}

fn check(ret: i32, what: &str) -> Result<(), DpdkError> {
    if ret < 0 {
        Err(DpdkError(format!("{what}: {} ({ret})", errno_text(-ret))))
    } else {
        Ok(())
    }
}

/// An initialised EAL. Dropping it does not clean up: call [`Eal::cleanup`]
/// after every port is closed and every worker has returned.
pub struct Eal {
    _private: (),
}

impl Eal {
    /// Runs `rte_eal_init` with `args` (args[0] is the program name) after
    /// checking that the library at run time is the one we were built for.
    pub fn init(args: &[String]) -> Result<Eal, DpdkError> {
        // SAFETY: ringlb_version returns a static string.
        let version = unsafe { CStr::from_ptr(sys::ringlb_version()) }.to_string_lossy().into_owned();
        if !version.contains(&format!(" {}.", sys::BUILT_FOR_SERIES)) {
            return Err(DpdkError(format!(
                "DPDK at run time is '{version}', ringlb was built for {}",
                sys::BUILT_FOR_SERIES
            )));
        }
        // SAFETY: a pure function of the C compiler's view of the struct.
        let c_size = unsafe { sys::ringlb_sizeof_mbuf() };
        if c_size != std::mem::size_of::<sys::rte_mbuf>() {
            return Err(DpdkError(format!(
                "ABI mismatch: sizeof(struct rte_mbuf) is {c_size} in C, {} in the bindings",
                std::mem::size_of::<sys::rte_mbuf>()
            )));
        }
        let cargs: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_str()).map_err(|_| DpdkError(format!("EAL argument contains NUL: {a:?}"))))
            .collect::<Result<_, _>>()?;
        let mut argv: Vec<*mut libc_char> = cargs.iter().map(|c| c.as_ptr() as *mut libc_char).collect();
        argv.push(std::ptr::null_mut());
        // SAFETY: argv is a NULL-terminated array of valid C strings that
        // outlive the call; EAL may permute the array but not free it. `cargs`
        // is leaked because EAL may keep pointers into it.
        let ret = unsafe { sys::rte_eal_init(args.len() as i32, argv.as_mut_ptr()) };
        std::mem::forget(cargs);
        if ret < 0 {
            return Err(last_error("rte_eal_init failed"));
        }
        Ok(Eal { _private: () })
    }

    pub fn tsc_hz(&self) -> u64 {
        // SAFETY: plain getter, valid after EAL init.
        unsafe { sys::rte_get_tsc_hz() }
    }

    /// Launches `f` on lcore `lcore` (not the main lcore).
    pub fn launch<F: FnOnce() -> i32 + Send + 'static>(&self, lcore: u32, f: F) -> Result<(), DpdkError> {
        extern "C" fn trampoline(arg: *mut c_void) -> i32 {
            // SAFETY: `arg` is the Box we leaked below, used exactly once.
            let f: Box<Box<dyn FnOnce() -> i32 + Send>> = unsafe { Box::from_raw(arg.cast()) };
            f()
        }
        let boxed: Box<Box<dyn FnOnce() -> i32 + Send>> = Box::new(Box::new(f));
        let arg = Box::into_raw(boxed).cast::<c_void>();
        // SAFETY: trampoline matches lcore_function_t; `arg` stays valid until it runs.
        let ret = unsafe { sys::rte_eal_remote_launch(Some(trampoline), arg, lcore) };
        if ret != 0 {
            // SAFETY: the launch failed, so the closure was never taken; reclaim it.
            drop(unsafe { Box::from_raw(arg.cast::<Box<dyn FnOnce() -> i32 + Send>>()) });
            return check(ret, &format!("launch on lcore {lcore}"));
        }
        Ok(())
    }

    /// Waits until every launched lcore function has returned.
    pub fn wait_all(&self) {
        // SAFETY: called from the main lcore.
        unsafe { sys::rte_eal_mp_wait_lcore() }
    }

    /// Waits for every lcore to return, then stops and closes `ports`
    /// (net_pcap flushes its output files here). Waiting first is what makes
    /// closing safe: queue handles live only on worker lcores.
    pub fn stop_ports(&self, ports: &[ConfiguredPort]) {
        self.wait_all();
        for p in ports {
            // SAFETY: no lcore is running, so no queue of the port is in use.
            unsafe {
                sys::rte_eth_dev_stop(p.0);
                sys::rte_eth_dev_close(p.0);
            }
        }
    }

    /// Releases EAL resources (hugepage memory, files). Last call of the process.
    pub fn cleanup(self) {
        // SAFETY: all ports are closed and lcores idle (caller's contract).
        unsafe {
            sys::rte_eal_cleanup();
        }
    }
}

#[allow(non_camel_case_types)]
type libc_char = std::ffi::c_char;

/// Reads the time-stamp counter (no syscall).
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: reads a CPU register.
    unsafe { sys::ringlb_rdtsc() }
}

#[inline]
pub fn pause() {
    // SAFETY: a CPU hint.
    unsafe { sys::ringlb_pause() }
}

/// A packet-buffer pool.
pub struct Mempool(*mut sys::rte_mempool);
// SAFETY: rte_mempool is designed for concurrent use from lcores.
unsafe impl Send for Mempool {}
unsafe impl Sync for Mempool {}

impl Mempool {
    pub fn new(name: &str, mbufs: u32, cache: u32, socket: i32) -> Result<Mempool, DpdkError> {
        let cname = CString::new(name).map_err(|_| DpdkError("pool name contains NUL".into()))?;
        // SAFETY: valid name; data room is the DPDK default (2 KiB + headroom).
        let mp = unsafe {
            sys::rte_pktmbuf_pool_create(cname.as_ptr(), mbufs, cache, 0, sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16, socket)
        };
        if mp.is_null() {
            return Err(last_error(&format!("creating mbuf pool '{name}' ({mbufs} mbufs)")));
        }
        Ok(Mempool(mp))
    }

    /// A fresh mbuf, or None when the pool is exhausted.
    #[inline]
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: valid pool.
        let m = unsafe { sys::ringlb_pktmbuf_alloc(self.0) };
        (!m.is_null()).then_some(Mbuf(m))
    }
}

/// An owned packet buffer. Freed on drop unless handed to tx or a hand-off queue.
/// `repr(transparent)`: a burst's pointer array can be viewed as `[Mbuf]`.
#[repr(transparent)]
pub struct Mbuf(*mut sys::rte_mbuf);
// SAFETY: an mbuf is owned by one lcore at a time; ownership moves with this handle.
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// The first segment's bytes. Read straight from the mbuf's first cache
    /// line (layout checked at build time), not through a C call per packet.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: buf_addr + data_off points at data_len valid bytes owned by this mbuf.
        unsafe {
            let m = &*self.0;
            let p = m.buf_addr.cast::<u8>().add(usize::from(m.data_off));
            std::slice::from_raw_parts_mut(p, usize::from(m.data_len))
        }
    }
    #[inline]
    pub fn segments(&self) -> u16 {
        // SAFETY: valid mbuf.
        unsafe { (*self.0).nb_segs }
    }
    /// The port the frame arrived on (set by the PMD; preserved across hand-off).
    #[inline]
    pub fn port(&self) -> u16 {
        // SAFETY: valid mbuf.
        unsafe { (*self.0).port }
    }
    /// Extends the data by `len` bytes and returns them; None if no room.
    pub fn append(&mut self, len: u16) -> Option<&mut [u8]> {
        // SAFETY: valid mbuf; append returns NULL or `len` writable bytes.
        unsafe {
            let p = sys::ringlb_pktmbuf_append(self.0, len);
            (!p.is_null()).then(|| std::slice::from_raw_parts_mut(p, usize::from(len)))
        }
    }
    /// Starts loading the frame's first cache line.
    #[inline]
    pub fn prefetch(&self) {
        // SAFETY: valid mbuf; only the address is computed, nothing is read through it.
        let p = unsafe { (*self.0).buf_addr.cast::<u8>().wrapping_add(usize::from((*self.0).data_off)) };
        crate::cpu::prefetch_addr(p);
    }
    #[inline]
    fn into_raw(self) -> *mut sys::rte_mbuf {
        let p = self.0;
        std::mem::forget(self);
        p
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf.
        unsafe { sys::ringlb_pktmbuf_free(self.0) }
    }
}

/// A fixed-capacity burst of mbufs, laid out as DPDK wants them.
pub struct Burst<const N: usize> {
    ptrs: [*mut sys::rte_mbuf; N],
    len: usize,
}

// SAFETY: the burst owns its mbufs.
unsafe impl<const N: usize> Send for Burst<N> {}

impl<const N: usize> Default for Burst<N> {
    fn default() -> Self {
        Burst { ptrs: [std::ptr::null_mut(); N], len: 0 }
    }
}

impl<const N: usize> Burst<N> {
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    #[inline]
    pub fn is_full(&self) -> bool {
        self.len == N
    }
    /// Adds an mbuf; gives it back if the burst is full.
    #[inline]
    pub fn push(&mut self, m: Mbuf) -> Result<(), Mbuf> {
        if self.len == N {
            return Err(m);
        }
        self.ptrs[self.len] = m.into_raw();
        self.len += 1;
        Ok(())
    }
    /// The mbufs, in place.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [Mbuf] {
        // SAFETY: Mbuf is a transparent wrapper of the pointer; the first
        // `len` entries are owned, valid mbufs, borrowed for as long as self.
        unsafe { std::slice::from_raw_parts_mut(self.ptrs.as_mut_ptr().cast::<Mbuf>(), self.len) }
    }
    /// The bytes of the frames held (each mbuf's packet length, from its
    /// header's first cache line, which the worker reads anyway).
    #[inline]
    pub fn bytes(&self) -> u64 {
        // SAFETY: the first `len` pointers are owned, valid mbufs.
        self.ptrs[..self.len].iter().map(|&p| u64::from(unsafe { (*p).pkt_len })).sum()
    }
    /// Takes the mbufs out, in order.
    #[inline]
    pub fn drain(&mut self) -> impl Iterator<Item = Mbuf> + '_ {
        let n = std::mem::take(&mut self.len);
        self.ptrs[..n].iter().map(|&p| Mbuf(p))
    }
    /// Keeps the mbufs from index `sent` on, moving them to the front.
    fn consume_front(&mut self, sent: usize) {
        self.ptrs.copy_within(sent..self.len, 0);
        self.len -= sent;
    }
}

impl<const N: usize> Drop for Burst<N> {
    fn drop(&mut self) {
        for m in self.drain() {
            drop(m);
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct PortInfo {
    pub max_rx_queues: u16,
    pub max_tx_queues: u16,
    pub driver: &'static str,
}

/// An Ethernet device, not configured yet. Not `Clone`: `configure`
/// consumes it, so a port cannot be configured twice, and only the
/// [`ConfiguredPort`] it returns can start it.
///
/// ```compile_fail
/// fn twice(port: ringlb::dpdk::Port, pool: &ringlb::dpdk::Mempool) {
///     let _ = port.configure(1, 1, 512, pool);
///     let _ = port.configure(1, 1, 512, pool); // use of moved value
/// }
/// ```
#[derive(Debug, PartialEq, Eq)]
pub struct Port(u16);

/// A port whose queues are set up (by [`Port::configure`]): it can start.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfiguredPort(u16);

impl Port {
    /// DPDK's port id.
    pub fn id(&self) -> u16 {
        self.0
    }

    /// Finds a port by the name DPDK gave it (vdev name or PCI address).
    pub fn by_name(name: &str) -> Result<Port, DpdkError> {
        let c = CString::new(name).map_err(|_| DpdkError("port name contains NUL".into()))?;
        let mut id: u16 = 0;
        // SAFETY: valid string and out-pointer.
        let ret = unsafe { sys::rte_eth_dev_get_port_by_name(c.as_ptr(), &mut id) };
        check(ret, &format!("no DPDK port named '{name}' (is the device bound / the vdev string right?)"))?;
        Ok(Port(id))
    }

    pub fn info(&self) -> Result<PortInfo, DpdkError> {
        let mut info = sys::rte_eth_dev_info::default();
        // SAFETY: valid out-pointer.
        check(unsafe { sys::rte_eth_dev_info_get(self.0, &mut info) }, "rte_eth_dev_info_get")?;
        let driver = if info.driver_name.is_null() {
            "?"
        } else {
            // SAFETY: driver names are static strings owned by the PMD.
            unsafe { CStr::from_ptr(info.driver_name) }.to_str().unwrap_or("?")
        };
        Ok(PortInfo { max_rx_queues: info.max_rx_queues, max_tx_queues: info.max_tx_queues, driver })
    }

    pub fn socket(&self) -> i32 {
        // SAFETY: plain getter.
        unsafe { sys::rte_eth_dev_socket_id(self.0) }.max(0)
    }

    /// Configures `rxq` receive and `txq` transmit queues with `desc`
    /// descriptors each, RSS over all that the device supports when rxq > 1.
    /// Returns the port, now startable, and the only handles to those
    /// queues: a DPDK queue must be used by one thread at a time, and
    /// owning its handle is what guarantees that.
    #[allow(clippy::type_complexity)]
    pub fn configure(
        self,
        rxq: u16,
        txq: u16,
        desc: u16,
        pool: &Mempool,
    ) -> Result<(ConfiguredPort, Vec<RxQueue>, Vec<TxQueue>), DpdkError> {
        self.configure_with(rxq, txq, desc, pool, true)
    }

    /// As `configure`; `rss: false` leaves the spreading over rx queues to
    /// the device (a tap: the kernel picks the queue).
    pub fn configure_with(
        self,
        rxq: u16,
        txq: u16,
        desc: u16,
        pool: &Mempool,
        rss: bool,
    ) -> Result<(ConfiguredPort, Vec<RxQueue>, Vec<TxQueue>), DpdkError> {
        let mut info = sys::rte_eth_dev_info::default();
        // SAFETY: valid out-pointer.
        check(unsafe { sys::rte_eth_dev_info_get(self.0, &mut info) }, "rte_eth_dev_info_get")?;
        let mut conf = sys::rte_eth_conf::default();
        if rss && rxq > 1 && info.flow_type_rss_offloads != 0 {
            conf.rxmode.mq_mode = sys::rte_eth_rx_mq_mode::RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_hf = info.flow_type_rss_offloads;
        }
        // SAFETY: valid config struct for the call's duration.
        check(unsafe { sys::rte_eth_dev_configure(self.0, rxq, txq, &conf) }, &format!("configuring port {}", self.0))?;
        let socket = self.socket() as u32;
        for q in 0..rxq {
            // SAFETY: valid pool; NULL rxconf selects the driver's defaults.
            let r = unsafe { sys::rte_eth_rx_queue_setup(self.0, q, desc, socket, std::ptr::null(), pool.0) };
            check(r, &format!("port {} rx queue {q}", self.0))?;
        }
        for q in 0..txq {
            // SAFETY: NULL txconf selects the driver's defaults.
            let r = unsafe { sys::rte_eth_tx_queue_setup(self.0, q, desc, socket, std::ptr::null()) };
            check(r, &format!("port {} tx queue {q}", self.0))?;
        }
        let rx = (0..rxq).map(|queue| RxQueue { port: self.0, queue }).collect();
        let tx = (0..txq).map(|queue| TxQueue { port: self.0, queue }).collect();
        Ok((ConfiguredPort(self.0), rx, tx))
    }
}

impl ConfiguredPort {
    /// DPDK's port id.
    pub fn id(&self) -> u16 {
        self.0
    }

    pub fn start(&self) -> Result<(), DpdkError> {
        // SAFETY: configured port.
        check(unsafe { sys::rte_eth_dev_start(self.0) }, &format!("starting port {}", self.0))?;
        // Promiscuous so a configured MAC different from the device's still
        // reaches us; software filters by destination MAC. Not every PMD supports it.
        // SAFETY: started port.
        let _ = unsafe { sys::rte_eth_promiscuous_enable(self.0) };
        Ok(())
    }

    pub fn mac(&self) -> Result<[u8; 6], DpdkError> {
        let mut a = sys::rte_ether_addr::default();
        // SAFETY: valid out-pointer.
        check(unsafe { sys::rte_eth_macaddr_get(self.0, &mut a) }, "rte_eth_macaddr_get")?;
        Ok(a.addr_bytes)
    }
}

/// One receive queue of one port. Not `Clone`: whoever holds it is the only
/// poller of that queue.
pub struct RxQueue {
    port: u16,
    queue: u16,
}

/// One transmit queue of one port; exclusively owned like [`RxQueue`].
pub struct TxQueue {
    port: u16,
    queue: u16,
}

impl RxQueue {
    /// Receives up to N frames into `out` (which must be empty).
    #[inline]
    pub fn rx<const N: usize>(&mut self, out: &mut Burst<N>) -> usize {
        debug_assert!(out.is_empty());
        // SAFETY: this handle is the queue's only user; `out` has room for N
        // pointers and the PMD fills `n` of them.
        let n = unsafe { sys::ringlb_rx_burst(self.port, self.queue, out.ptrs.as_mut_ptr(), N as u16) };
        out.len = usize::from(n);
        out.len
    }
}

impl TxQueue {
    /// Sends the burst; what the queue did not take stays in `b`.
    #[inline]
    pub fn tx<const N: usize>(&mut self, b: &mut Burst<N>) -> usize {
        if b.is_empty() {
            return 0;
        }
        // SAFETY: this handle is the queue's only user; the first b.len
        // pointers are owned mbufs and the PMD takes `sent` of them.
        let sent =
            usize::from(unsafe { sys::ringlb_tx_burst(self.port, self.queue, b.ptrs.as_mut_ptr(), b.len as u16) });
        b.consume_front(sent);
        sent
    }
}

/// A single-producer / single-consumer queue of mbufs between two workers
/// (a DPDK `rte_ring`, SP/SC),
/// as its two ends: each is `Send` but neither is `Clone` or `Sync`, so there
/// is one producer and one consumer by construction.
pub fn handoff_queue(name: &str, size: u32, socket: i32) -> Result<(HandoffTx, HandoffRx), DpdkError> {
    let c = CString::new(name).map_err(|_| DpdkError("ring name contains NUL".into()))?;
    // SAFETY: valid name; size is a power of two (caller).
    let r = unsafe { sys::rte_ring_create(c.as_ptr(), size, socket, sys::RING_F_SP_ENQ | sys::RING_F_SC_DEQ) };
    if r.is_null() {
        return Err(last_error(&format!("creating hand-off queue '{name}'")));
    }
    let q = std::sync::Arc::new(MbufQueue(r));
    Ok((HandoffTx(std::sync::Arc::clone(&q)), HandoffRx(q)))
}

struct MbufQueue(*mut sys::rte_ring);
// SAFETY: the pointer is only used through HandoffTx (enqueue) and HandoffRx
// (dequeue, count), one of each per queue; rte_ring SP/SC allows exactly that.
unsafe impl Send for MbufQueue {}
unsafe impl Sync for MbufQueue {}

impl Drop for MbufQueue {
    fn drop(&mut self) {
        // SAFETY: both ends are gone. Mbufs still inside are not freed: queues
        // are drained by their consumer before workers stop.
        unsafe { sys::rte_ring_free(self.0) }
    }
}

/// The sending end of a hand-off queue.
pub struct HandoffTx(std::sync::Arc<MbufQueue>);
/// The receiving end of a hand-off queue.
pub struct HandoffRx(std::sync::Arc<MbufQueue>);

impl HandoffTx {
    /// Enqueues what fits; the rest stays in `b`.
    #[inline]
    pub fn enqueue<const N: usize>(&mut self, b: &mut Burst<N>) -> usize {
        if b.is_empty() {
            return 0;
        }
        // SAFETY: the only producer; pointers are owned mbufs.
        let n = unsafe { sys::ringlb_ring_enqueue_burst(self.0 .0, b.ptrs.as_ptr().cast(), b.len as u32) } as usize;
        b.consume_front(n);
        n
    }
}

impl HandoffRx {
    /// Frames waiting in the queue.
    #[inline]
    pub fn count(&self) -> u32 {
        // SAFETY: reading the queue's head/tail indices.
        unsafe { sys::ringlb_ring_count(self.0 .0) }
    }

    #[inline]
    pub fn dequeue<const N: usize>(&mut self, out: &mut Burst<N>) -> usize {
        debug_assert!(out.is_empty());
        // SAFETY: the only consumer; room for N pointers.
        let n = unsafe { sys::ringlb_ring_dequeue_burst(self.0 .0, out.ptrs.as_mut_ptr().cast(), N as u32) } as usize;
        out.len = n;
        n
    }
}

/// DPDK telemetry commands of the appliance's own (`/ringlb/...`, read by
/// `dpdk-telemetry.py` on EAL's telemetry socket). Each answers, on
/// DPDK's telemetry thread, with the values last published for it: the
/// control thread publishes, the workers are never asked.
pub mod telemetry {
    use super::{check, sys, DpdkError};
    use std::ffi::{c_char, c_int, CStr, CString};
    use std::sync::Mutex;

    /// A command's values (names already valid for telemetry).
    type Values = Vec<(CString, u64)>;
    /// Per command: its values.
    static PUBLISHED: Mutex<Vec<(CString, Values)>> = Mutex::new(Vec::new());

    /// A dict holds at most this many entries (RTE_TEL_MAX_DICT_ENTRIES).
    const MAX_ENTRIES: usize = 256;

    /// Registers `cmd` (e.g. "/ringlb/stats"); it answers with an empty
    /// dict until something is published for it.
    pub fn register(cmd: &str, help: &str) -> Result<(), DpdkError> {
        let bad = |_| DpdkError(format!("telemetry command {cmd:?}: contains a NUL byte"));
        let (c, h) = (CString::new(cmd).map_err(bad)?, CString::new(help).map_err(bad)?);
        // DPDK keeps the command for the process's life: so do we.
        let (c, h): (&'static CStr, &'static CStr) = (Box::leak(c.into_boxed_c_str()), Box::leak(h.into_boxed_c_str()));
        // SAFETY: both strings live for ever; `answer` has the callback's signature.
        let ret = unsafe { sys::rte_telemetry_register_cmd(c.as_ptr(), Some(answer), h.as_ptr()) };
        check(ret, &format!("registering telemetry command {cmd}"))
    }

    /// The values `cmd` answers with from now on. Names are made valid for
    /// telemetry (letters, digits, '_' and '/'; anything else becomes '_').
    pub fn publish(cmd: &str, values: &[(String, u64)]) {
        let Ok(cmd) = CString::new(cmd) else { return };
        let values: Vec<(CString, u64)> = values
            .iter()
            .take(MAX_ENTRIES)
            .filter_map(|(name, v)| Some((CString::new(valid_name(name)).ok()?, *v)))
            .collect();
        let mut published = PUBLISHED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match published.iter_mut().find(|(c, _)| *c == cmd) {
            Some(slot) => slot.1 = values,
            None => published.push((cmd, values)),
        }
    }

    /// What a telemetry name may hold.
    pub fn valid_name(name: &str) -> String {
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '/' { c } else { '_' }).collect()
    }

    /// The values published for `cmd`, as telemetry's callback sees them.
    pub fn published(cmd: &str) -> Option<Vec<(String, u64)>> {
        let published = PUBLISHED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (_, values) = published.iter().find(|(c, _)| c.to_bytes() == cmd.as_bytes())?;
        Some(values.iter().map(|(n, v)| (n.to_string_lossy().into_owned(), *v)).collect())
    }

    extern "C" fn answer(cmd: *const c_char, _params: *const c_char, d: *mut sys::rte_tel_data) -> c_int {
        if cmd.is_null() || d.is_null() {
            return -1;
        }
        // SAFETY: DPDK passes the NUL-terminated command it registered.
        let cmd = unsafe { CStr::from_ptr(cmd) };
        let published = PUBLISHED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // SAFETY: `d` is the telemetry library's data for this answer.
        unsafe { sys::rte_tel_data_start_dict(d) };
        if let Some((_, values)) = published.iter().find(|(c, _)| c.as_c_str() == cmd) {
            for (name, v) in values {
                // SAFETY: `name` is NUL-terminated and valid; `d` was started as a dict.
                unsafe { sys::rte_tel_data_add_dict_u64(d, name.as_ptr(), *v) };
            }
        }
        0
    }
}
