/* fake_loop: the loop_*() functions of include/uproxy/loop.h for unit tests. Records each
 * request and keeps it pending until the test completes it; keeps a provided-buffer ring in
 * memory (loop_pbuf_*) that fake_deliver fills like the kernel. Never does I/O on any fd. */
#include "fake_loop.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct fake_pbuf {
	void *addr;
	uint32_t len;
	uint16_t bid;
};

struct loop {
	struct fake_req reqs[FAKE_MAX_REQS];
	size_t n;
	struct loop_stats stats;
	/* the provided-buffer ring: entries [head, tail) are the kernel's to fill */
	struct fake_pbuf *ring;
	uint32_t entries;
	uint16_t bgid;
	uint32_t head, tail;
};

static const char *const kind_names[FK__COUNT] = {
    "accept_multishot",
    "accept",
    "read",
    "timeout",
    "socket",
    "connect",
    "connect_timeout",
    "link_timeout",
    "recv_multishot",
    "recv_bundle",
    "recv",
    "recv_buf",
    "send",
    "write",
    "sendmsg",
    "shutdown",
    "close",
    "cancel",
    "cancel_fd",
};

const char *fake_kind_name(enum fake_kind k)
{
	return (unsigned)k < FK__COUNT ? kind_names[k] : "?";
}

struct loop *fake_loop_new(void)
{
	return calloc(1, sizeof(struct loop));
}

void fake_loop_free(struct loop *l)
{
	if (l == NULL)
		return;
	for (size_t i = 0; i < l->n; i++)
		free(l->reqs[i].data);
	free(l->ring);
	free(l);
}

size_t fake_nreqs(const struct loop *l)
{
	return l->n;
}

struct fake_req *fake_req(struct loop *l, size_t i)
{
	return i < l->n ? &l->reqs[i] : NULL;
}

static struct fake_req *rec(struct loop *l, enum fake_kind k, int fd, uint64_t tag)
{
	struct fake_req *r;

	if (l->n == FAKE_MAX_REQS) {
		fprintf(stderr, "fake_loop: more than %d requests\n", FAKE_MAX_REQS);
		abort();
	}
	r = &l->reqs[l->n++];
	memset(r, 0, sizeof(*r));
	r->kind = k;
	r->fd = fd;
	r->tag = tag;
	r->pending = true;
	l->stats.submitted++;
	return r;
}

struct fake_req *fake_find(struct loop *l, enum fake_kind k, enum loop_op op, int side,
			   bool pending_only)
{
	for (size_t i = l->n; i-- > 0;) {
		struct fake_req *r = &l->reqs[i];

		if (r->kind == k && tag_op(r->tag) == op &&
		    (side < 0 || tag_side(r->tag) == (unsigned)side) &&
		    (!pending_only || r->pending))
			return r;
	}
	return NULL;
}

size_t fake_pending_for(const struct loop *l, uint32_t slot, uint32_t gen)
{
	size_t n = 0;

	for (size_t i = 0; i < l->n; i++)
		n += l->reqs[i].pending && tag_slot(l->reqs[i].tag) == slot &&
		     tag_gen(l->reqs[i].tag) == (gen & TAG_GEN_MASK);
	return n;
}

size_t fake_count_since(const struct loop *l, size_t mark, enum fake_kind k)
{
	size_t n = 0;

	for (size_t i = mark; i < l->n; i++)
		n += l->reqs[i].kind == k;
	return n;
}

struct loop_cqe fake_complete(struct loop *l, struct fake_req *r, int32_t res, uint16_t flags)
{
	struct loop_cqe c = {.tag = r->tag, .res = res, .flags = flags};

	if (!r->pending) {
		fprintf(stderr, "fake_loop: %s request completed twice\n", fake_kind_name(r->kind));
		abort();
	}
	if (!(flags & LOOP_CQE_MORE))
		r->pending = false;
	l->stats.cqes++;
	return c;
}

uint32_t fake_pbuf_available(const struct loop *l)
{
	return l->tail - l->head;
}

bool fake_pbuf_take(struct loop *l, uint16_t *bid)
{
	if (l->head == l->tail)
		return false;
	*bid = l->ring[l->head++ & (l->entries - 1)].bid;
	return true;
}

struct loop_cqe fake_deliver(struct loop *l, struct fake_req *r, const void *bytes, size_t len)
{
	struct fake_pbuf *pb;
	struct loop_cqe c;

	if (len == 0 || len > INT32_MAX) {
		fprintf(stderr, "fake_loop: deliver needs 1.. bytes\n");
		abort();
	}
	if (r->kind == FK_RECV_BUF || r->kind == FK_READ) {
		if (len > r->len)
			abort();
		memcpy(r->buf, bytes, len);
		return fake_complete(l, r, (int32_t)len, 0);
	}
	if (r->kind != FK_RECV && r->kind != FK_RECV_MULTISHOT && r->kind != FK_RECV_BUNDLE) {
		fprintf(stderr, "fake_loop: deliver to a %s request\n", fake_kind_name(r->kind));
		abort();
	}
	if (l->head == l->tail) /* the kernel ends a buffer-select recv with ENOBUFS */
		return fake_complete(l, r, -ENOBUFS, 0);
	pb = &l->ring[l->head & (l->entries - 1)];
	if (len > pb->len) {
		fprintf(stderr, "fake_loop: %zu bytes do not fit a %u-byte buffer\n", len, pb->len);
		abort();
	}
	l->head++;
	memcpy(pb->addr, bytes, len);
	c = fake_complete(l, r, (int32_t)len, LOOP_CQE_BUFFER | (r->multishot ? LOOP_CQE_MORE : 0));
	c.bid = pb->bid;
	return c;
}

/* ---- loop.h ---- */

const struct loop_stats *loop_stats(const struct loop *l)
{
	return &l->stats;
}

int loop_pbuf_register(struct loop *l, uint16_t bgid, uint32_t entries, char *why, size_t whylen)
{
	if (entries == 0 || (entries & (entries - 1)) != 0) {
		snprintf(why, whylen, "fake_loop: %u ring entries, not a power of two", entries);
		return -EINVAL;
	}
	free(l->ring);
	l->ring = calloc(entries, sizeof(*l->ring));
	if (l->ring == NULL) {
		snprintf(why, whylen, "fake_loop: out of memory");
		return -ENOMEM;
	}
	l->entries = entries;
	l->bgid = bgid;
	l->head = l->tail = 0;
	return 0;
}

void loop_pbuf_add(struct loop *l, void *addr, uint32_t len, uint16_t bid, int offset)
{
	struct fake_pbuf *pb = &l->ring[(l->tail + (uint32_t)offset) & (l->entries - 1)];

	pb->addr = addr;
	pb->len = len;
	pb->bid = bid;
}

void loop_pbuf_publish(struct loop *l, int count)
{
	l->tail += (uint32_t)count;
	if (l->tail - l->head > l->entries) {
		fprintf(stderr, "fake_loop: %u buffers published into a ring of %u\n",
			l->tail - l->head, l->entries);
		abort();
	}
}

bool loop_has_recv_bundle(const struct loop *l)
{
	(void)l;
	return false;
}

void loop_accept_multishot(struct loop *l, int fd, uint64_t tag)
{
	rec(l, FK_ACCEPT_MULTISHOT, fd, tag)->multishot = true;
}

void loop_accept(struct loop *l, int fd, uint64_t tag)
{
	rec(l, FK_ACCEPT, fd, tag);
}

void loop_read(struct loop *l, int fd, void *buf, unsigned int len, uint64_t tag)
{
	struct fake_req *r = rec(l, FK_READ, fd, tag);

	r->buf = buf;
	r->len = len;
}

void loop_timeout(struct loop *l, uint32_t ms, uint64_t tag)
{
	rec(l, FK_TIMEOUT, -1, tag)->ms = ms;
}

void loop_socket(struct loop *l, int domain, int type, int protocol, uint64_t tag)
{
	(void)type;
	(void)protocol;
	rec(l, FK_SOCKET, -1, tag)->domain = domain;
}

static void set_sa(struct fake_req *r, const struct sockaddr *sa, socklen_t len)
{
	if (len > sizeof(r->sa))
		len = sizeof(r->sa);
	memcpy(&r->sa, sa, len);
	r->salen = len;
}

void loop_connect(struct loop *l, int fd, const struct sockaddr *sa, socklen_t len, uint64_t tag)
{
	set_sa(rec(l, FK_CONNECT, fd, tag), sa, len);
}

void loop_connect_timeout(struct loop *l, int fd, const struct sockaddr *sa, socklen_t len,
			  uint32_t ms, uint64_t tag, uint64_t ttag)
{
	struct fake_req *r = rec(l, FK_CONNECT_TIMEOUT, fd, tag);

	set_sa(r, sa, len);
	r->ms = ms;
	rec(l, FK_LINK_TIMEOUT, fd, ttag)->ms = ms;
}

static void recv_sel(struct loop *l, enum fake_kind k, int fd, uint16_t bgid, uint64_t tag,
		     bool multishot)
{
	struct fake_req *r = rec(l, k, fd, tag);

	r->bgid = bgid;
	r->multishot = multishot;
}

void loop_recv_multishot(struct loop *l, int fd, uint16_t bgid, uint64_t tag)
{
	recv_sel(l, FK_RECV_MULTISHOT, fd, bgid, tag, true);
}

void loop_recv_bundle(struct loop *l, int fd, uint16_t bgid, uint64_t tag)
{
	recv_sel(l, FK_RECV_BUNDLE, fd, bgid, tag, true);
}

void loop_recv(struct loop *l, int fd, uint16_t bgid, uint64_t tag)
{
	recv_sel(l, FK_RECV, fd, bgid, tag, false);
}

static struct fake_req *rec_send(struct loop *l, enum fake_kind k, int fd, const void *buf,
				 unsigned int len, uint64_t tag)
{
	struct fake_req *r = rec(l, k, fd, tag);

	r->buf = (void *)buf;
	r->len = len;
	r->data = malloc(len ? len : 1);
	if (r->data == NULL)
		abort();
	memcpy(r->data, buf, len);
	return r;
}

void loop_send(struct loop *l, int fd, const void *buf, unsigned int len, uint64_t tag)
{
	rec_send(l, FK_SEND, fd, buf, len, tag);
}

void loop_write(struct loop *l, int fd, const void *buf, unsigned int len, uint64_t tag)
{
	rec_send(l, FK_WRITE, fd, buf, len, tag);
}

void loop_recv_buf(struct loop *l, int fd, void *buf, unsigned int len, uint64_t tag)
{
	struct fake_req *r = rec(l, FK_RECV_BUF, fd, tag);

	r->buf = buf;
	r->len = len;
}

void loop_recv_buf_timeout(struct loop *l, int fd, void *buf, unsigned int len, uint32_t ms,
			   uint64_t tag, uint64_t ttag)
{
	loop_recv_buf(l, fd, buf, len, tag);
	rec(l, FK_LINK_TIMEOUT, fd, ttag)->ms = ms;
}

void loop_send_timeout(struct loop *l, int fd, const void *buf, unsigned int len, uint32_t ms,
		       uint64_t tag, uint64_t ttag)
{
	loop_send(l, fd, buf, len, tag);
	rec(l, FK_LINK_TIMEOUT, fd, ttag)->ms = ms;
}

void loop_sendmsg(struct loop *l, int fd, const struct msghdr *msg, uint64_t tag)
{
	struct fake_req *r = rec(l, FK_SENDMSG, fd, tag);
	size_t total = 0, off = 0;

	for (size_t i = 0; i < msg->msg_iovlen; i++)
		total += msg->msg_iov[i].iov_len;
	r->buf = msg->msg_iovlen ? msg->msg_iov[0].iov_base : NULL;
	r->len = (unsigned int)total;
	r->niov = (unsigned int)msg->msg_iovlen;
	r->data = malloc(total ? total : 1);
	if (r->data == NULL)
		abort();
	for (size_t i = 0; i < msg->msg_iovlen; i++) {
		memcpy(r->data + off, msg->msg_iov[i].iov_base, msg->msg_iov[i].iov_len);
		off += msg->msg_iov[i].iov_len;
	}
}

void loop_shutdown(struct loop *l, int fd, int how, uint64_t tag)
{
	rec(l, FK_SHUTDOWN, fd, tag)->how = how;
}

void loop_close(struct loop *l, int fd, uint64_t tag)
{
	rec(l, FK_CLOSE, fd, tag);
}

void loop_cancel(struct loop *l, uint64_t target, uint64_t tag)
{
	rec(l, FK_CANCEL, -1, tag)->target = target;
}

void loop_cancel_fd_then_close(struct loop *l, int fd, uint64_t cancel_tag, uint64_t close_tag)
{
	rec(l, FK_CANCEL_FD, fd, cancel_tag);
	rec(l, FK_CLOSE, fd, close_tag);
}
