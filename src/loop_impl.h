/* loop_impl: what the loop backends share, private to src/loop*.c. struct loop is the base every
 * backend's own loop struct embeds first: the ops table every public loop_*() calls through,
 * and the counters. */
#ifndef UPROXY_LOOP_IMPL_H
#define UPROXY_LOOP_IMPL_H

#include "uproxy/loop.h"

struct loop_ops {
	const char *name;
	void (*free)(struct loop *l);
	void (*describe)(const struct loop *l, char *buf, size_t len);
	int (*probe)(struct loop *l, char *why, size_t whylen);
	int (*run_once)(struct loop *l, loop_cqe_fn fn, void *ctx, int64_t timeout_ms);
	bool (*fault_session_start)(struct loop *l); /* NULL: never */
	int (*pbuf_register)(struct loop *l, uint16_t bgid, uint32_t entries, char *why,
			     size_t whylen);
	void (*pbuf_add)(struct loop *l, void *addr, uint32_t len, uint16_t bid, int offset);
	void (*pbuf_publish)(struct loop *l, int count);
	void (*accept_multishot)(struct loop *l, int fd, uint64_t tag);
	void (*accept)(struct loop *l, int fd, uint64_t tag);
	void (*read)(struct loop *l, int fd, void *buf, unsigned int len, uint64_t tag);
	void (*timeout)(struct loop *l, uint32_t ms, uint64_t tag);
	void (*socket)(struct loop *l, int domain, int type, int protocol, uint64_t tag);
	void (*connect)(struct loop *l, int fd, const struct sockaddr *sa, socklen_t len,
			uint64_t tag);
	void (*connect_timeout)(struct loop *l, int fd, const struct sockaddr *sa, socklen_t len,
				uint32_t ms, uint64_t tag, uint64_t ttag);
	void (*recv_multishot)(struct loop *l, int fd, uint16_t bgid, uint64_t tag);
	bool (*has_recv_bundle)(const struct loop *l);
	void (*recv_bundle)(struct loop *l, int fd, uint16_t bgid, uint64_t tag);
	void (*recv)(struct loop *l, int fd, uint16_t bgid, uint64_t tag);
	void (*send)(struct loop *l, int fd, const void *buf, unsigned int len, uint64_t tag);
	void (*recv_buf)(struct loop *l, int fd, void *buf, unsigned int len, uint64_t tag);
	void (*recv_buf_timeout)(struct loop *l, int fd, void *buf, unsigned int len, uint32_t ms,
				 uint64_t tag, uint64_t ttag);
	void (*send_timeout)(struct loop *l, int fd, const void *buf, unsigned int len, uint32_t ms,
			     uint64_t tag, uint64_t ttag);
	void (*write)(struct loop *l, int fd, const void *buf, unsigned int len, uint64_t tag);
	void (*sendmsg)(struct loop *l, int fd, const struct msghdr *msg, uint64_t tag);
	void (*shutdown)(struct loop *l, int fd, int how, uint64_t tag);
	void (*close)(struct loop *l, int fd, uint64_t tag);
	void (*cancel)(struct loop *l, uint64_t target, uint64_t tag);
	void (*cancel_fd_then_close)(struct loop *l, int fd, uint64_t cancel_tag,
				     uint64_t close_tag);
};

struct loop {
	const struct loop_ops *ops;
	struct loop_stats st;
};

/* Each backend's constructor (same contract as loop_new). */
int loop_uring_new(unsigned int sq_entries, unsigned int cq_entries, struct loop **out, char *why,
		   size_t whylen);
int loop_epoll_new(unsigned int sq_entries, unsigned int cq_entries, struct loop **out, char *why,
		   size_t whylen);

#endif
