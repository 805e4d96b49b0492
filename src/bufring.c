/* bufring: one registered provided-buffer ring (5.19+) per worker. Buffers are handed to the
 * kernel, come back in recv CQEs, travel in a session's queue, and are put back here when
 * their send completes. Must never hand the kernel a buffer twice. */
#include "uproxy/bufring.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

int bufring_init(struct bufring *b, struct loop *l, uint16_t bgid, uint32_t count, uint32_t size,
		 char *why, size_t whylen)
{
	struct io_uring_buf_reg reg;
	int rc;

	memset(b, 0, sizeof(*b));
	b->size = size;
	b->count = count;
	b->bgid = bgid;
	b->ring_bytes = (size_t)count * sizeof(struct io_uring_buf);
	b->br = mmap(NULL, b->ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
		     0);
	if (b->br == MAP_FAILED) {
		b->br = NULL;
		snprintf(why, whylen, "cannot allocate the buffer ring: %s", strerror(errno));
		return -ENOMEM;
	}
	/* Buffer memory is touched lazily by the kernel: an idle proxy keeps it unmapped. */
	b->base_bytes = (size_t)count * size;
	b->base = mmap(NULL, b->base_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		       -1, 0);
	b->next = calloc(count, sizeof(*b->next));
	b->len = calloc(count, sizeof(*b->len));
	if (b->base == MAP_FAILED || b->next == NULL || b->len == NULL) {
		if (b->base == MAP_FAILED)
			b->base = NULL;
		snprintf(why, whylen, "cannot allocate %u receive buffers of %u bytes", count, size);
		bufring_destroy(b, NULL);
		return -ENOMEM;
	}
	io_uring_buf_ring_init(b->br);
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (uint64_t)(uintptr_t)b->br;
	reg.ring_entries = count;
	reg.bgid = bgid;
	rc = io_uring_register_buf_ring(&l->ring, &reg, 0);
	if (rc < 0) {
		snprintf(why, whylen, "cannot register the provided-buffer ring: %s "
			 "(needs Linux 5.19 or newer)", strerror(-rc));
		bufring_destroy(b, NULL);
		return rc;
	}
	for (uint32_t i = 0; i < count; i++)
		bufring_put(b, i);
	bufring_commit(b);
	return 0;
}

void bufring_destroy(struct bufring *b, struct loop *l)
{
	if (l != NULL && b->br != NULL)
		io_uring_unregister_buf_ring(&l->ring, b->bgid);
	if (b->br != NULL)
		munmap(b->br, b->ring_bytes);
	if (b->base != NULL)
		munmap(b->base, b->base_bytes);
	free(b->next);
	free(b->len);
	memset(b, 0, sizeof(*b));
}

void bufring_put(struct bufring *b, uint32_t bid)
{
	io_uring_buf_ring_add(b->br, bufring_data(b, bid), b->size, (unsigned short)bid,
			      io_uring_buf_ring_mask(b->count), (int)b->pending);
	b->pending++;
}

void bufring_commit(struct bufring *b)
{
	if (b->pending == 0)
		return;
	io_uring_buf_ring_advance(b->br, (int)b->pending);
	b->in_ring += b->pending;
	b->pending = 0;
}
