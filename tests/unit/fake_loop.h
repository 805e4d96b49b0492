/* fake_loop: a stand-in for the event backend (include/uproxy/loop.h) for unit tests. Every
 * loop_*() request is recorded in an inspectable list instead of doing I/O, and stays pending
 * until the test completes it; the provided-buffer ring is kept in memory so a test can deliver
 * received bytes into the next pool buffer the way the kernel does. */
#ifndef UPROXY_TESTS_FAKE_LOOP_H
#define UPROXY_TESTS_FAKE_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "uproxy/loop.h"

/* Which loop_*() function recorded a request. */
enum fake_kind {
	FK_ACCEPT_MULTISHOT,
	FK_ACCEPT,
	FK_READ,
	FK_TIMEOUT,
	FK_SOCKET,
	FK_CONNECT,
	FK_CONNECT_TIMEOUT, /* the connect half; its linked timeout is the next request */
	FK_LINK_TIMEOUT,    /* the timeout half of a linked pair */
	FK_RECV_MULTISHOT,
	FK_RECV_BUNDLE,
	FK_RECV,     /* single recv into one provided buffer */
	FK_RECV_BUF, /* plain recv into a caller's buffer */
	FK_SEND,
	FK_WRITE,
	FK_SENDMSG,
	FK_SHUTDOWN,
	FK_CLOSE,
	FK_CANCEL,
	FK_CANCEL_FD, /* the cancel half of loop_cancel_fd_then_close */
	FK__COUNT
};

#define FAKE_MAX_REQS 4096

struct fake_req {
	enum fake_kind kind;
	uint64_t tag;
	int fd;
	uint32_t ms;	   /* timeouts, linked timeouts */
	uint64_t target;   /* FK_CANCEL: the tag cancelled */
	int how;	   /* FK_SHUTDOWN */
	int domain;	   /* FK_SOCKET */
	uint16_t bgid;	   /* buffer-select recvs */
	void *buf;	   /* FK_RECV_BUF / FK_READ: where bytes go; sends: first byte sent */
	unsigned int len;  /* bytes asked for (sends: total over the iovec) */
	unsigned int niov; /* FK_SENDMSG: iovec entries */
	uint8_t *data;	   /* sends: a copy of the bytes taken when the request was made */
	struct sockaddr_storage sa; /* connects */
	socklen_t salen;
	bool multishot; /* completes with LOOP_CQE_MORE until it ends */
	bool pending;	/* submitted and its last completion not yet delivered */
};

/* The fake loop: created by fake_loop_new, owned by the test. */
struct loop;

struct loop *fake_loop_new(void);
void fake_loop_free(struct loop *l);

/* Requests recorded so far (pending or not), oldest first; index i stays valid. */
size_t fake_nreqs(const struct loop *l);
struct fake_req *fake_req(struct loop *l, size_t i);

/* The newest request of kind k whose tag has op (and side, if side >= 0), or NULL. Pending
 * only, if pending_only. */
struct fake_req *fake_find(struct loop *l, enum fake_kind k, enum loop_op op, int side,
			   bool pending_only);
/* Pending requests whose tag names slot/gen. */
size_t fake_pending_for(const struct loop *l, uint32_t slot, uint32_t gen);
/* Requests recorded since mark (a value of fake_nreqs) matching kind k. */
size_t fake_count_since(const struct loop *l, size_t mark, enum fake_kind k);

/* Completes r with res and flags (LOOP_CQE_MORE keeps it pending). Returns its completion. */
struct loop_cqe fake_complete(struct loop *l, struct fake_req *r, int32_t res, uint16_t flags);

/* Delivers len received bytes (len > 0) to recv request r the way the kernel would: a
 * buffer-select recv takes the next entry of the provided-buffer ring (its bid in the cqe,
 * LOOP_CQE_BUFFER set, LOOP_CQE_MORE while a multishot stays armed), or completes with
 * -ENOBUFS and ends when the ring is empty; a plain recv copies into its own buffer. len must
 * fit one buffer. */
struct loop_cqe fake_deliver(struct loop *l, struct fake_req *r, const void *bytes, size_t len);

/* Provided-buffer ring: entries the kernel could fill now; taking the next one as a receive on
 * some other socket would (its bid in *bid; false when the ring is empty). */
uint32_t fake_pbuf_available(const struct loop *l);
bool fake_pbuf_take(struct loop *l, uint16_t *bid);

const char *fake_kind_name(enum fake_kind k);

#endif
