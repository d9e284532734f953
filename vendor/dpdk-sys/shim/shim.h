/* Non-inline wrappers for DPDK's static inline fast-path functions and macros,
 * so Rust can call them. bindgen reads this header: no signature is copied by
 * hand on the Rust side. */
#ifndef RINGLB_DPDK_SHIM_H
#define RINGLB_DPDK_SHIM_H

#include <stdint.h>
#include <rte_config.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_launch.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_ring.h>
#include <rte_cycles.h>
#include <rte_version.h>
#include <rte_malloc.h>
#include <rte_telemetry.h>

uint16_t ringlb_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t ringlb_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
struct rte_mbuf *ringlb_pktmbuf_alloc(struct rte_mempool *mp);
void ringlb_pktmbuf_free(struct rte_mbuf *m);
void ringlb_pktmbuf_free_bulk(struct rte_mbuf **m, unsigned int n);
/* Appends len bytes to a fresh mbuf; NULL when the segment has no room. */
uint8_t *ringlb_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
unsigned int ringlb_ring_enqueue_burst(struct rte_ring *r, void *const *objs, unsigned int n);
unsigned int ringlb_ring_dequeue_burst(struct rte_ring *r, void **objs, unsigned int n);
unsigned int ringlb_ring_count(const struct rte_ring *r);
unsigned int ringlb_lcore_id(void);
int ringlb_errno(void);
uint64_t ringlb_rdtsc(void);
void ringlb_pause(void);
/* sizeof(struct rte_mbuf) as the C compiler sees it, for the runtime ABI check. */
size_t ringlb_sizeof_mbuf(void);
const char *ringlb_version(void);

#endif
