/* bufring: the provided-buffer ring a worker's multishot recvs fill. Registers it, hands out
 * buffer memory by id, recycles ids once their bytes are sent, and counts exhaustion.
 * Never frees a buffer the kernel or a pending send may still be using: callers recycle only
 * after the send that used it has completed. */
#ifndef UPROXY_BUFRING_H
#define UPROXY_BUFRING_H

#include <stddef.h>
#include <stdint.h>

#include "uproxy/loop.h"

#define BUFRING_NIL UINT32_MAX /* end of a buffer queue */

struct bufring {
	struct io_uring_buf_ring *br;
	size_t ring_bytes;
	uint8_t *base;	   /* count * size bytes of buffer memory */
	size_t base_bytes;
	uint32_t size;	   /* bytes per buffer */
	uint32_t count;	   /* buffers in all */
	uint16_t bgid;	   /* buffer group id */
	uint32_t in_ring;  /* buffers the kernel can fill now */
	uint32_t pending;  /* recycled but not yet published to the kernel */
	uint32_t *next;	   /* per buffer: next buffer in its session queue */
	uint32_t *len;	   /* per buffer: bytes of data it holds */
	uint64_t exhausted; /* ENOBUFS completions seen */
};

/* Allocates count buffers of size bytes and registers them as group bgid. -errno on failure. */
int bufring_init(struct bufring *b, struct loop *l, uint16_t bgid, uint32_t count, uint32_t size,
		 char *why, size_t whylen);
void bufring_destroy(struct bufring *b, struct loop *l);

static inline uint8_t *bufring_data(const struct bufring *b, uint32_t bid)
{
	return b->base + (size_t)bid * b->size;
}

/* A recv completion consumed buffer bid holding len bytes. */
static inline void bufring_took(struct bufring *b, uint32_t bid, uint32_t len)
{
	b->in_ring--;
	b->len[bid] = len;
	b->next[bid] = BUFRING_NIL;
}

/* Gives buffer bid back; the kernel sees it after the next bufring_commit. */
void bufring_put(struct bufring *b, uint32_t bid);

/* Publishes every buffer put since the last commit (one store-release). */
void bufring_commit(struct bufring *b);

/* Buffers available to the kernel, counting those put but not yet committed. */
static inline uint32_t bufring_available(const struct bufring *b)
{
	return b->in_ring + b->pending;
}

#endif
