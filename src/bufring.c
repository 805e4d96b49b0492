/* bufring: one pool of provided buffers per worker, registered with its loop, and the fallback
 * buffers that stand in when it runs low. Pool buffers are handed to the kernel, come back in
 * recv completions, travel in a session's queue, and are put back here when their send
 * completes. Must never hand the kernel a buffer twice, nor free memory a request may read. */
#include "uproxy/bufring.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Buffers kept in the ring at least (or the whole pool if smaller): 128 x 16 KiB covers four
 * full multishot bursts (32 buffers each) between two commits; a ring that runs dry doubles
 * its target at once, and the target halves back toward this after each calm second. */
#define BUFRING_TARGET_MIN	128u
#define BUFRING_TARGET_DECAY_MS 1000u

int bufring_init(struct bufring *b, struct loop *l, uint16_t bgid, uint32_t count, uint32_t size,
		 uint32_t fb_cap, char *why, size_t whylen)
{
	size_t ids = (size_t)count + fb_cap;
	int rc;

	memset(b, 0, sizeof(*b));
	b->loop = l;
	b->size = size;
	b->count = count;
	b->bgid = bgid;
	b->fb_cap = fb_cap;
	/* Buffer memory is touched lazily by the kernel: an idle proxy keeps it unmapped. The
	 * per-id arrays are calloc'd: pages of fallback ids are touched only when used. */
	b->base_bytes = (size_t)count * size;
	b->base = mmap(NULL, b->base_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
		       0);
	b->next = calloc(ids, sizeof(*b->next));
	b->len = calloc(ids, sizeof(*b->len));
	b->fb = calloc(fb_cap ? fb_cap : 1, sizeof(*b->fb));
	b->fb_free = calloc(fb_cap ? fb_cap : 1, sizeof(*b->fb_free));
	b->stack = calloc(count, sizeof(*b->stack));
	b->ring_bid = calloc(count, sizeof(*b->ring_bid));
	b->pos_of = calloc(count, sizeof(*b->pos_of));
	if (b->base == MAP_FAILED || b->next == NULL || b->len == NULL || b->fb == NULL ||
	    b->fb_free == NULL || b->stack == NULL || b->ring_bid == NULL || b->pos_of == NULL) {
		if (b->base == MAP_FAILED)
			b->base = NULL;
		snprintf(why, whylen, "cannot allocate %u receive buffers of %u bytes", count,
			 size);
		bufring_destroy(b);
		return -ENOMEM;
	}
	/* Lowest ids on top of the stack. */
	for (uint32_t i = 0; i < fb_cap; i++)
		b->fb_free[i] = count + fb_cap - 1 - i;
	b->fb_nfree = fb_cap;
	rc = loop_pbuf_register(l, bgid, count, why, whylen);
	if (rc < 0) {
		bufring_destroy(b);
		return rc;
	}
	/* Lowest ids on top: they are the ones a quiet proxy keeps reusing. */
	for (uint32_t i = count; i-- > 0;)
		bufring_put(b, i);
	b->target = count < BUFRING_TARGET_MIN ? count : BUFRING_TARGET_MIN;
	bufring_commit(b, 0);
	return 0;
}

void bufring_destroy(struct bufring *b)
{
	if (b->base != NULL)
		munmap(b->base, b->base_bytes);
	for (uint32_t i = 0; b->fb != NULL && i < b->fb_cap; i++)
		free(b->fb[i]);
	free(b->fb);
	free(b->fb_free);
	free(b->stack);
	free(b->ring_bid);
	free(b->pos_of);
	free(b->next);
	free(b->len);
	memset(b, 0, sizeof(*b));
}

uint32_t bufring_fallback_get(struct bufring *b)
{
	uint32_t bid;
	uint8_t *mem;

	if (b->fb_nfree == 0)
		return BUFRING_NIL;
	mem = malloc(BUFRING_FALLBACK_SIZE);
	if (mem == NULL)
		return BUFRING_NIL;
	bid = b->fb_free[--b->fb_nfree];
	b->fb[bid - b->count] = mem;
	b->len[bid] = 0;
	b->next[bid] = BUFRING_NIL;
	return bid;
}

void bufring_put(struct bufring *b, uint32_t bid)
{
	if (bid >= b->count) {
		free(b->fb[bid - b->count]);
		b->fb[bid - b->count] = NULL;
		b->fb_free[b->fb_nfree++] = bid;
		return;
	}
	b->stack[b->nstack++] = bid;
}

void bufring_starved(struct bufring *b, uint64_t now_ms)
{
	b->target = b->target * 2 < b->count ? b->target * 2 : b->count;
	b->target_ms = now_ms;
}

void bufring_commit(struct bufring *b, uint64_t now_ms)
{
	uint32_t floor = b->count < BUFRING_TARGET_MIN ? b->count : BUFRING_TARGET_MIN;
	int n = 0;

	if (b->target > floor && now_ms - b->target_ms >= BUFRING_TARGET_DECAY_MS) {
		b->target = b->target / 2 > floor ? b->target / 2 : floor;
		b->target_ms = now_ms;
	}
	while (b->in_ring + (uint32_t)n < b->target && b->nstack > 0) {
		uint32_t bid = b->stack[--b->nstack];
		uint16_t pos = (uint16_t)(b->tail + n);

		loop_pbuf_add(b->loop, bufring_data(b, bid), b->size, (uint16_t)bid, n);
		b->ring_bid[pos & (b->count - 1)] = bid;
		b->pos_of[bid] = pos;
		n++;
	}
	if (n == 0)
		return;
	loop_pbuf_publish(b->loop, n);
	b->tail = (uint16_t)(b->tail + n);
	b->in_ring += (uint32_t)n;
}
