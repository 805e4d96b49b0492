/* session: one client <-> upstream pair. Its state machine, its two directions (queues of
 * received buffers waiting to be sent), half-close, back-pressure and teardown.
 * A session never frees its slot while any of its requests is still in flight. */
#ifndef UPROXY_SESSION_H
#define UPROXY_SESSION_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "uproxy/proxyproto.h"
#include "uproxy/sni.h"
#include "uproxy/stats.h"
#include "uproxy/timer.h"

struct loop;
struct loop_cqe;
struct bufring;
struct config;
struct session_pre;
struct svc;
struct upool;

enum session_state {
	SS_FREE = 0,	  /* slot unused */
	SS_AWAIT_HEADER,  /* --accept-proxy: reading the client's PROXY protocol header */
	SS_CONNECTING,	  /* client accepted, upstream socket/connect in flight */
	SS_STREAMING,	  /* both directions open */
	SS_CLIENT_DONE,	  /* client sent EOF, passed on to upstream; upstream->client still open */
	SS_UPSTREAM_DONE, /* upstream sent EOF, passed on to client; client->upstream still open */
	SS_CLOSING,	  /* fds closed or closing; waiting for in-flight requests to complete */
	SS__COUNT
};

enum session_event {
	SE_START = 0,	/* a client was accepted into a free slot */
	SE_START_PROXY, /* the same, with a PROXY protocol header to read first */
	SE_HEADER_DONE, /* the header arrived and parsed */
	SE_CONNECTED,	/* the upstream connect succeeded */
	SE_C2U_DONE,	/* client EOF drained and shutdown(SHUT_WR) sent to upstream */
	SE_U2C_DONE,	/* upstream EOF drained and shutdown(SHUT_WR) sent to client */
	SE_ABORT,	/* error, reset, connect failure or proxy shutdown */
	SE_RELEASED,	/* nothing in flight any more: the slot can be reused */
	SE__COUNT
};

/* The one table of allowed transitions. Returns the next state, or SS__COUNT if the event is
 * not allowed in that state. */
enum session_state session_transition(enum session_state from, enum session_event ev);
const char *session_state_name(enum session_state s);
const char *session_event_name(enum session_event e);

/* Directions: data received from side d is sent to side !d. */
enum { DIR_C2U = 0, DIR_U2C = 1 };
enum { SIDE_CLIENT = 0, SIDE_UPSTREAM = 1 };

/* Buffers gathered into one sendmsg; 8 x 16 KiB = 128 KiB per send keeps bulk transfers to a
 * few SQEs per MiB without making a session large. */
#define DIR_IOV_MAX 8

/* Back-pressure: a direction stops receiving when this many bytes wait to be sent and
 * resumes below a quarter of it. 256 KiB is two full sendmsg batches in flight. With a small
 * buffer pool the mark shrinks to 1/16 of the pool (at least two buffers), so one reader that
 * never reads can hold only a sixteenth of the pool; and once less than half the pool is free
 * the mark shrinks further (session.c: high_water_now). */
#define SESSION_HIGH_WATER	   (256u * 1024)
#define SESSION_POOL_SHARE_DIVISOR 16u

enum dir_flags {
	DIR_RECV_ARMED = 1 << 0,  /* multishot recv in flight */
	DIR_RECV_CANCEL = 1 << 1, /* its cancel is in flight (back-pressure) */
	DIR_EOF = 1 << 2,	  /* the sending peer finished */
	DIR_SHUT_SENT = 1 << 3,	  /* shutdown(SHUT_WR) submitted to the receiving peer */
	DIR_DONE = 1 << 4,	  /* that shutdown completed */
	DIR_RECV_FB = 1 << 5,	  /* the recv in flight fills fallback buffer fb */
	DIR_RECV_BUNDLE = 1 << 6, /* the recv in flight completes in bundles of buffers */
};

struct session_dir {
	uint32_t head, tail; /* queue of buffer ids (linked through bufring.next) */
	uint32_t head_off;   /* bytes of the head buffer already sent */
	uint32_t queued;     /* bytes received but not yet sent */
	uint16_t send_n;     /* buffers covered by the send in flight; 0 = none */
	uint16_t flags;	     /* enum dir_flags */
	uint32_t fb;	     /* fallback buffer of the recv in flight (DIR_RECV_FB) */
	struct msghdr msg;
	struct iovec iov[DIR_IOV_MAX];
};

/* What a session sends upstream before the client's stream: its PROXY header (--send-proxy)
 * and the client bytes that arrived behind an accepted header (--accept-proxy). Kept per slot,
 * only when one of the two options is on. */
#define SESSION_PRE_MAX (PROXYPROTO_MAX_LEN + PROXYPROTO_V1_BUILD_MAX)
/* --accept-proxy: a header that has not arrived by then closes the connection. */
#define SESSION_HEADER_TIMEOUT_MS 3000

struct session_pre {
	struct addr src, dst; /* the client's addresses: from the header or the socket */
	uint16_t len, off;    /* bytes in data; bytes of them already sent */
	uint8_t data[SESSION_PRE_MAX];
	/* sni-route: the client's first bytes, kept until its ClientHello chose the pool, then
	 * sent upstream (after data) unchanged. malloc'd while waiting, SESSION_HELLO_MAX. */
	uint8_t *hello;
	uint32_t hello_len, hello_off;
};

/* Room for the largest ClientHello the parser decides on (16 KiB of handshake in up to 64
 * records): what one waiting client can pin, for at most its listener's sni-timeout. */
#define SESSION_HELLO_MAX SNI_MAX_INPUT

/* session.truncated bits. */
#define SESSION_LOST_CLIENT   1u /* bytes for the client were dropped */
#define SESSION_LOST_UPSTREAM 2u /* bytes for the upstream were dropped */

/* Upstreams one session may try: the first plus at most SESSION_MAX_TRIES - 1 retries. */
#define SESSION_MAX_TRIES  17
#define SESSION_NO_BACKEND UINT32_MAX

struct session {
	struct timer_node timer;   /* idle / fin inactivity deadline */
	uint64_t connect_start_us; /* when the current upstream attempt began */
	uint64_t start_ms;	   /* accepted at (monotonic) */
	uint64_t bytes[2];	   /* forwarded per direction */
	uint32_t gen;		   /* bumped on release; part of every tag */
	uint32_t next_free;	   /* free-list link */
	uint8_t state;		   /* enum session_state */
	uint8_t reason;		   /* enum close_reason, once closing */
	uint8_t ntried;		   /* upstreams tried so far */
	uint8_t have_peer;	   /* worker's peer_addrs[slot] holds the client's address */
	uint8_t wait_fd;     /* CONNECTING, waiting (timer) for an fd for the upstream socket */
	uint8_t truncated;   /* SESSION_LOST_* bits: sides reset because bytes for them were lost */
	uint8_t svc;	     /* the listener it came in on (session_env.svcs index) */
	uint8_t pool;	     /* the pool it forwards to (session_env.pools index), or UINT8_MAX */
	uint8_t sni_wait;    /* AWAIT_HEADER: reading the ClientHello (not a PROXY header) */
	uint8_t climit_held; /* holds climit_slot in its listener's client table */
	uint8_t pre_used;    /* its session_pre is in use (PROXY protocol, sni-route) */
	uint32_t climit_slot;
	uint32_t backend; /* backend id held, or SESSION_NO_BACKEND */
	uint16_t tried[SESSION_MAX_TRIES];
	uint32_t inflight; /* requests submitted and not yet completed */
	int fd[2];	   /* [SIDE_CLIENT], [SIDE_UPSTREAM]; -1 when closed */
	struct session_dir dir[2];
};

/* What the session logic works with: handed in by the worker, never reached through it. The
 * worker owns every pointer and keeps now_ms current; the session reads and writes the rest. */
struct session_env {
	struct loop *loop;
	struct bufring *bufs;
	struct timer_wheel *wheel;
	struct svc *svcs;	  /* the listeners, by session.svc */
	struct upool *pools;	  /* the pools, by session.pool */
	const struct config *cfg; /* global options only (buffers, ...): never a listener's */
	struct worker_stats *st;
	struct session *slab;	 /* the slots: a session's slot is s - slab */
	struct addr *peer_addrs; /* per slot (pages touched only when a feature needs it) */
	struct session_pre *pre; /* per slot (idem) */
	uint64_t now_ms;	 /* CLOCK_MONOTONIC, read once per loop iteration */
	uint32_t high_water;	 /* back-pressure mark per direction with the pool at ease */
	bool recv_bundle;	 /* arm receive bundles (the backend has them, not forced off) */
	bool backends_dirty;	 /* set when sessions moved the pool's counts or health */
	int worker_id;		 /* for log lines */
	unsigned int out;	 /* SESSION_OUT_* gathered while handling one event */
	struct log_ratelimit rl_connect, rl_socket, rl_proxy;
};

/* While a session waits for an fd for its upstream socket (EMFILE), it retries this often; the
 * worker pauses accepting for as long (WORKER_ACCEPT_BACKOFF_MS). 100 ms keeps a starved proxy
 * under 1% CPU. */
#define SESSION_FD_WAIT_MS 100

/* What the worker must do after a session event (a closed set, OR-ed). */
enum session_outcome {
	SESSION_OUT_NONE = 0,
	SESSION_OUT_RELEASED = 1u << 0, /* nothing in flight any more: give the slot back */
	SESSION_OUT_NEED_FD = 1u << 1,	/* out of fds or memory: pause accepting a while */
};

static inline uint32_t session_slot(const struct session_env *e, const struct session *s)
{
	return (uint32_t)(s - e->slab);
}

/* A client connection was accepted into s (a free slot) on listener svc: check it against the
 * listener's access list and limits, read its PROXY header or ClientHello if the listener
 * wants them, and connect upstream. */
void session_start(struct session_env *e, struct session *s, int client_fd, unsigned int svc);

/* Applies one completion to its session (already checked not stale). Returns what the worker
 * must do: SESSION_OUT_RELEASED once the session has nothing in flight (the slot is free to
 * reuse), SESSION_OUT_NEED_FD when it ran out of fds. */
unsigned int session_handle(struct session_env *e, struct session *s, const struct loop_cqe *c);

/* Closes the session for reason. A side toward which bytes are lost (queued in the session,
 * or unread in the other side's socket) is closed with RST, and so is the other side: loss is
 * never a clean FIN. No-op if already closing. */
void session_abort(struct session_env *e, struct session *s, enum close_reason reason);

/* Its idle or fin deadline passed: close it (or push it on, if there was activity since). */
void session_timeout(struct session_env *e, struct session *s);

#endif
