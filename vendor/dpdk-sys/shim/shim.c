#include "shim.h"

uint16_t ringlb_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n) {
    return rte_eth_rx_burst(port, queue, pkts, n);
}
uint16_t ringlb_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n) {
    return rte_eth_tx_burst(port, queue, pkts, n);
}
struct rte_mbuf *ringlb_pktmbuf_alloc(struct rte_mempool *mp) { return rte_pktmbuf_alloc(mp); }
void ringlb_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }
void ringlb_pktmbuf_free_bulk(struct rte_mbuf **m, unsigned int n) { rte_pktmbuf_free_bulk(m, n); }
uint8_t *ringlb_pktmbuf_append(struct rte_mbuf *m, uint16_t len) {
    return (uint8_t *)rte_pktmbuf_append(m, len);
}
unsigned int ringlb_ring_enqueue_burst(struct rte_ring *r, void *const *objs, unsigned int n) {
    return rte_ring_enqueue_burst(r, objs, n, NULL);
}
unsigned int ringlb_ring_dequeue_burst(struct rte_ring *r, void **objs, unsigned int n) {
    return rte_ring_dequeue_burst(r, objs, n, NULL);
}
unsigned int ringlb_ring_count(const struct rte_ring *r) { return rte_ring_count(r); }
unsigned int ringlb_lcore_id(void) { return rte_lcore_id(); }
int ringlb_errno(void) { return rte_errno; }
uint64_t ringlb_rdtsc(void) { return rte_rdtsc(); }
void ringlb_pause(void) { rte_pause(); }
size_t ringlb_sizeof_mbuf(void) { return sizeof(struct rte_mbuf); }
const char *ringlb_version(void) { return rte_version(); }
