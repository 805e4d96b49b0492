/* bufring: a worker's receive buffers. A registered provided-buffer ring (the shared pool the
 * kernel fills), plus private fallback buffers, one at most per direction, used when the pool
 * runs low so that no session ever waits for another to free a buffer. Hands out buffer memory
 * by id, recycles ids once their bytes are sent, and counts exhaustion. Never frees a buffer
 * the kernel or a pending send may still be using: callers put an id back only after the send
 * that used it has completed, and the pool's memory is unmapped only after the ring is gone. */
#ifndef UPROXY_BUFRING_H
#define UPROXY_BUFRING_H

#include <stddef.h>
#include <stdint.h>

#include "uproxy/loop.h"

#define BUFRING_NIL UINT32_MAX /* end of a buffer queue */

/* A fallback buffer: what a direction receives into while the pool is low. 4 KiB keeps the
 * worst case small (two per session: 8 KiB, against HAProxy's 2 x 16 KiB per session) while a
 * session that has only fallback buffers still moves ~4 KiB per round trip of the loop. */
#define BUFRING_FALLBACK_SIZE 4096u

struct bufring {
	struct loop *loop; /* where the pool is registered (loop_pbuf_*) */
	uint8_t *base;	   /* count * size bytes of pool memory */
	size_t base_bytes;
	uint32_t size;	  /* bytes per pool buffer */
	uint32_t count;	  /* pool buffers: ids 0 .. count-1 */
	uint16_t bgid;	  /* buffer group id */
	uint32_t in_ring; /* pool buffers the kernel can fill now */
	/* Free pool buffers not in the ring, most recently used on top: the ring is topped up
	 * from here to `target` at each commit, so a quiet proxy keeps reusing the same few warm
	 * buffers instead of cycling (and touching the pages of) the whole pool. */
	uint32_t *stack;
	uint32_t nstack;
	/* Where each buffer went in the ring, and which buffer is at each ring entry: a bundle
	 * completion names only its first buffer; the others are the entries after it. */
	uint32_t *ring_bid; /* per ring entry (tail & mask): its buffer id */
	uint16_t *pos_of;   /* per pool id: the ring position it was published at */
	uint16_t tail;	    /* positions published so far (the kernel's tail, 16 bits) */
	uint32_t target;    /* buffers to keep in the ring: doubles on ENOBUFS, decays when calm */
	uint64_t target_ms; /* when target last changed */
	uint32_t *next;	    /* per id: next buffer in its session queue */
	uint32_t *len;	    /* per id: bytes of data it holds */
	/* Fallback ids: count .. count+fb_cap-1, memory malloc'd while in use. */
	uint32_t fb_cap;
	uint32_t fb_nfree; /* ids on the free stack */
	uint32_t *fb_free;
	uint8_t **fb;	    /* per fallback id: its memory, NULL when free */
	uint64_t exhausted; /* ENOBUFS completions seen */
};

/* Allocates count pool buffers of size bytes, registers them with l as group bgid, and prepares
 * fb_cap fallback ids (memory allocated only while one is in use). -errno on failure. */
int bufring_init(struct bufring *b, struct loop *l, uint16_t bgid, uint32_t count, uint32_t size,
		 uint32_t fb_cap, char *why, size_t whylen);
/* Frees everything. Call only after the ring is gone (loop_exit): a send may read a buffer
 * until its completion arrives, and the ring's teardown is what ends such sends. */
void bufring_destroy(struct bufring *b);

static inline uint8_t *bufring_data(const struct bufring *b, uint32_t bid)
{
	if (bid < b->count)
		return b->base + (size_t)bid * b->size;
	return b->fb[bid - b->count];
}

/* A recv completion consumed pool buffer bid holding len bytes. */
static inline void bufring_took(struct bufring *b, uint32_t bid, uint32_t len)
{
	b->in_ring--;
	b->len[bid] = len;
	b->next[bid] = BUFRING_NIL;
}

/* Buffer i (0 = first) of a bundle that starts with pool buffer first. */
static inline uint32_t bufring_bundle_bid(const struct bufring *b, uint32_t first, uint32_t i)
{
	return b->ring_bid[(uint16_t)(b->pos_of[first] + i) & (b->count - 1)];
}

/* A fallback buffer for one recv: its id, or BUFRING_NIL when out of ids or memory. */
uint32_t bufring_fallback_get(struct bufring *b);

/* A recv into fallback buffer bid completed with len bytes. */
static inline void bufring_fallback_took(struct bufring *b, uint32_t bid, uint32_t len)
{
	b->len[bid] = len;
	b->next[bid] = BUFRING_NIL;
}

/* Fallback buffers in use now. */
static inline uint32_t bufring_fallback_used(const struct bufring *b)
{
	return b->fb_cap - b->fb_nfree;
}

/* Gives buffer bid back: a pool buffer to the free stack (the kernel gets it at a commit),
 * a fallback buffer's memory to the allocator. */
void bufring_put(struct bufring *b, uint32_t bid);

/* A receive found the ring empty: keep more buffers in it from the next commit on. */
void bufring_starved(struct bufring *b, uint64_t now_ms);

/* Tops the ring up to its target from the free stack (one store-release) and lets the target
 * decay while the ring does not run dry. Once per loop iteration, before the wait. */
void bufring_commit(struct bufring *b, uint64_t now_ms);

/* Free pool buffers: in the ring or on the stack. */
static inline uint32_t bufring_available(const struct bufring *b)
{
	return b->in_ring + b->nstack;
}

#endif
