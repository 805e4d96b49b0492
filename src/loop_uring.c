/* loop_uring: the io_uring backend of the loop (the default). Everything that touches SQEs or
 * the CQ lives here, behind the ops table src/loop.c dispatches through (the epoll backend is
 * src/loop_epoll.c). Must never block except in the one submit-and-wait per iteration. */
#include "loop_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <time.h>

#include "uproxy/compat.h"
#include "uproxy/log.h"

/* CQEs handed out per peek; large enough that a busy iteration takes few peeks. */
#define LOOP_CQE_BATCH 256

/* ---- fault injection (meson -Dfault_injection=true; never in a release build) ---- */

static const char *const fault_names[LOOP_FAULT__COUNT] = {
	[LOOP_FAULT_SHORT_SEND] = "short_send",
	[LOOP_FAULT_ENOBUFS] = "enobufs",
	[LOOP_FAULT_RECV_RESET] = "recv_reset",
	[LOOP_FAULT_SEND_RESET] = "send_reset",
	[LOOP_FAULT_SOCKET] = "socket",
	[LOOP_FAULT_CONNECT] = "connect",
	[LOOP_FAULT_ENTER] = "enter",
	[LOOP_FAULT_SQ_FULL] = "sq_full",
	[LOOP_FAULT_CQ_OVERFLOW] = "cq_overflow",
	[LOOP_FAULT_SESSION_START] = "session_start",
	[LOOP_FAULT_FATAL] = "fatal",
};

/* Timespecs of timeout SQEs: the kernel copies one when it takes the SQE, so it must live until
 * the submit. Handed out from fixed chunks (addresses never move) and reused once the ring and
 * the backlog are empty after a submit. */
#define LOOP_TS_CHUNK 256

struct ts_chunk {
	struct ts_chunk *next;
	struct __kernel_timespec ts[LOOP_TS_CHUNK];
};

struct loop_fault_state;

struct uring_loop {
	struct loop base; /* first: ops and counters */
	struct io_uring ring;
	unsigned int setup_flags; /* the IORING_SETUP_* flags the kernel accepted */
	bool ring_fd_registered;
	/* SQEs prepared while the SQ was full and could not be submitted, oldest first at
	 * [bl_head]; flushed into the ring, in order and whole link chains at a time, before the
	 * next enter. While non-empty every new SQE goes behind them. */
	struct io_uring_sqe *bl;
	unsigned int bl_head, bl_len, bl_cap;
	unsigned int chain_left; /* SQEs still to come of a chain reserve_sqes() placed */
	bool chain_backlog;	 /* ... and whether they go to the backlog */
	/* Synthetic completions (fault injection), handed out at the next loop_run_once. */
	struct loop_cqe *syn;
	unsigned int syn_len, syn_cap;
	unsigned int backoff_ms; /* current back-off after a transient enter error, 0 if none */
	unsigned int koverflow_seen;
	struct log_ratelimit rl_overflow;
	struct loop_fault_state *fault;	   /* NULL unless injecting */
	struct ts_chunk *ts_head, *ts_cur; /* timespec chunks; the one handing out now */
	unsigned int ts_used;		   /* entries of ts_cur handed out */
	struct io_uring_buf_ring *pbuf;	   /* the provided-buffer ring (5.19) */
	size_t pbuf_bytes;
	uint32_t pbuf_entries;
	uint16_t pbuf_bgid;
};

const char *loop_fault_name(enum loop_fault f)
{
	return (unsigned int)f < LOOP_FAULT__COUNT ? fault_names[f] : "?";
}

#ifdef UPROXY_FAULT_INJECTION

#include <stdatomic.h>

/* Private copies of a trimmed msghdr (short sendmsg); the kernel reads them while submitting,
 * so one is reused only once the SQ and the backlog are empty again. */
#define FAULT_MSG_COPIES 64
#define FAULT_MSG_IOV	 8
/* Iterations the cq_overflow fault leaves completions unreaped (posting more with each
 * GETEVENTS), unless the kernel reports a real overflow first. */
#define FAULT_HOLD_ITERS   16
#define FAULT_RATE_DEFAULT 50

struct loop_fault_state {
	uint64_t rng;	      /* xorshift64* state */
	uint64_t rate;	      /* one fault per rate eligible operations, on average */
	uint32_t kinds;	      /* bit per enum loop_fault enabled */
	uint64_t fatal_after; /* the enter that fails fatally (and every one after), 0: never */
	uint64_t enters;
	unsigned int hold;  /* iterations left without reaping (cq_overflow fault) */
	bool fake_overflow; /* run the overflow flush when the hold ends */
	unsigned int nmsg;
	struct {
		struct msghdr msg;
		struct iovec iov[FAULT_MSG_IOV];
	} msg[FAULT_MSG_COPIES];
};

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t fault_rand(struct loop_fault_state *f)
{
	f->rng ^= f->rng >> 12;
	f->rng ^= f->rng << 25;
	f->rng ^= f->rng >> 27;
	return f->rng * 2685821657736338717ULL;
}

static uint64_t env_u64(const char *name, uint64_t dflt)
{
	const char *v = getenv(name);
	char *end;
	unsigned long long x;

	if (v == NULL || *v == '\0')
		return dflt;
	errno = 0;
	x = strtoull(v, &end, 0);
	return errno == 0 && *end == '\0' ? (uint64_t)x : dflt;
}

/* UPROXY_FAULT_KINDS: comma-separated fault names; unset or "all": every kind but "fatal"
 * (which UPROXY_FAULT_FATAL_AFTER turns on). */
static uint32_t env_kinds(void)
{
	const char *v = getenv("UPROXY_FAULT_KINDS");
	uint32_t all = ((1u << LOOP_FAULT__COUNT) - 1) & ~(1u << LOOP_FAULT_FATAL), kinds = 0;

	if (v == NULL || *v == '\0' || strcmp(v, "all") == 0)
		return all;
	while (*v != '\0') {
		size_t n = strcspn(v, ",");
		unsigned int k;

		for (k = 0; k < LOOP_FAULT__COUNT; k++) {
			if (strlen(fault_names[k]) == n && strncmp(v, fault_names[k], n) == 0)
				break;
		}
		if (k < LOOP_FAULT__COUNT)
			kinds |= 1u << k;
		else
			log_error("UPROXY_FAULT_KINDS: unknown fault '%.*s' ignored", (int)n, v);
		v += n;
		if (*v == ',')
			v++;
	}
	return kinds;
}

static void fault_init(struct uring_loop *l)
{
	static atomic_uint nloops;
	struct loop_fault_state *f;
	uint64_t x;

	if (getenv("UPROXY_FAULT_SEED") == NULL)
		return;
	f = calloc(1, sizeof(*f));
	if (f == NULL)
		return;
	/* One stream per loop (worker), all derived from the seed: a run is reproducible as long
	 * as the traffic is. */
	x = env_u64("UPROXY_FAULT_SEED", 1) + 0x1000193ULL * atomic_fetch_add(&nloops, 1);
	f->rng = splitmix64(&x) | 1;
	f->rate = env_u64("UPROXY_FAULT_RATE", FAULT_RATE_DEFAULT);
	if (f->rate == 0)
		f->rate = 1;
	f->kinds = env_kinds();
	f->fatal_after = env_u64("UPROXY_FAULT_FATAL_AFTER", 0);
	l->fault = f;
	log_warn("fault injection on: UPROXY_FAULT_SEED=%s, one fault per %llu operations, kinds "
		 "0x%x, fatal after enter %llu",
		 getenv("UPROXY_FAULT_SEED"), (unsigned long long)f->rate, f->kinds,
		 (unsigned long long)f->fatal_after);
}

/* UPROXY_FAULT_CQ_ENTRIES=N: a CQ of N entries (the kernel rounds up to a power of two) and an
 * SQ of at most N, since the kernel wants CQ >= SQ. Independent of UPROXY_FAULT_SEED: it injects
 * nothing, it only lets an ordinary load overflow the CQ for real, which a 6.x kernel with the
 * default size (up to 64Ki entries) never shows. */
static void fault_ring_size(unsigned int *sq_entries, unsigned int *cq_entries)
{
	uint64_t n = env_u64("UPROXY_FAULT_CQ_ENTRIES", 0);

	if (n == 0 || n > *cq_entries)
		return;
	*cq_entries = (unsigned int)n;
	if (*sq_entries > n)
		*sq_entries = (unsigned int)n;
}

static void fault_exit(struct uring_loop *l)
{
	char buf[512];
	size_t n = 0;

	if (l->fault == NULL)
		return;
	for (unsigned int k = 0; k < LOOP_FAULT__COUNT && n < sizeof(buf); k++)
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, " %s=%llu", fault_names[k],
				      (unsigned long long)l->base.st.faults[k]);
	/* The tests read this line to prove the faults really happened. */
	log_warn("injected faults:%s enter_retries=%llu sq_backlog=%llu cq_overflow=%llu", buf,
		 (unsigned long long)l->base.st.enter_retries,
		 (unsigned long long)l->base.st.sq_backlog,
		 (unsigned long long)l->base.st.cq_overflow);
	free(l->fault);
	l->fault = NULL;
}

/* Rolls the dice for one eligible operation; the caller counts the fault once it is done. */
static bool fault_roll(struct uring_loop *l, enum loop_fault k)
{
	struct loop_fault_state *f = l->fault;

	return f != NULL && (f->kinds & (1u << k)) && fault_rand(f) % f->rate == 0;
}

static bool syn_post(struct uring_loop *l, uint64_t tag, int res);

/* Completes tag with res instead of submitting it, if fault k is drawn. */
static bool fault_post(struct uring_loop *l, enum loop_fault k, uint64_t tag, int res)
{
	if (!fault_roll(l, k) || !syn_post(l, tag, res))
		return false;
	l->base.st.faults[k]++;
	return true;
}

/* Completes a linked pair at once: tag with res, ttag with tres (both or neither). */
static bool fault_post2(struct uring_loop *l, enum loop_fault k, uint64_t tag, int res,
			uint64_t ttag, int tres)
{
	if (!fault_roll(l, k) || !syn_post(l, tag, res))
		return false;
	if (!syn_post(l, ttag, tres)) {
		l->syn_len--;
		return false;
	}
	l->base.st.faults[k]++;
	return true;
}

/* An error injected in place of an io_uring_enter, or 0 to enter for real. */
static int fault_enter(struct uring_loop *l)
{
	struct loop_fault_state *f = l->fault;

	if (f == NULL)
		return 0;
	f->enters++;
	if (f->fatal_after != 0 && f->enters >= f->fatal_after) {
		l->base.st.faults[LOOP_FAULT_FATAL]++;
		return -EBADF;
	}
	if (fault_roll(l, LOOP_FAULT_ENTER)) {
		l->base.st.faults[LOOP_FAULT_ENTER]++;
		return fault_rand(f) & 1 ? -EAGAIN : -ENOMEM;
	}
	return 0;
}

static bool u_fault_session_start(struct loop *lb_)
{
	struct uring_loop *l = (struct uring_loop *)lb_;

	if (!fault_roll(l, LOOP_FAULT_SESSION_START))
		return false;
	l->base.st.faults[LOOP_FAULT_SESSION_START]++;
	return true;
}

/* A private copy of msg carrying only the first half of its bytes, or NULL. */
static const struct msghdr *fault_short_msg(struct uring_loop *l, const struct msghdr *msg)
{
	struct loop_fault_state *f = l->fault;
	size_t total = 0, want, n = 0;

	if (f == NULL || f->nmsg >= FAULT_MSG_COPIES)
		return NULL;
	for (size_t i = 0; i < msg->msg_iovlen; i++)
		total += msg->msg_iov[i].iov_len;
	if (total < 2 || !fault_roll(l, LOOP_FAULT_SHORT_SEND))
		return NULL;
	want = total / 2;
	struct msghdr *m = &f->msg[f->nmsg].msg;
	struct iovec *iov = f->msg[f->nmsg].iov;

	*m = *msg;
	for (size_t i = 0; i < msg->msg_iovlen && want > 0 && n < FAULT_MSG_IOV; i++, n++) {
		iov[n] = msg->msg_iov[i];
		if (iov[n].iov_len > want)
			iov[n].iov_len = want;
		want -= iov[n].iov_len;
	}
	m->msg_iov = iov;
	m->msg_iovlen = n;
	f->nmsg++;
	l->base.st.faults[LOOP_FAULT_SHORT_SEND]++;
	return m;
}

static unsigned int fault_short_len(struct uring_loop *l, unsigned int len)
{
	if (len < 2 || !fault_roll(l, LOOP_FAULT_SHORT_SEND))
		return len;
	l->base.st.faults[LOOP_FAULT_SHORT_SEND]++;
	return len / 2;
}

/* True while the cq_overflow fault keeps completions unreaped this iteration. */
static bool fault_holding(struct uring_loop *l)
{
	struct loop_fault_state *f = l->fault;

	if (f == NULL)
		return false;
	if (f->hold == 0 && fault_roll(l, LOOP_FAULT_CQ_OVERFLOW)) {
		l->base.st.faults[LOOP_FAULT_CQ_OVERFLOW]++;
		f->hold = FAULT_HOLD_ITERS;
	}
	if (f->hold == 0)
		return false;
	if (--f->hold == 0 || io_uring_cq_has_overflow(&l->ring)) {
		f->hold = 0;
		f->fake_overflow = true;
		return false;
	}
	return true;
}

static bool fault_take_fake_overflow(struct uring_loop *l)
{
	bool r = l->fault != NULL && l->fault->fake_overflow;

	if (r)
		l->fault->fake_overflow = false;
	return r;
}

static void fault_iteration_done(struct uring_loop *l)
{
	if (l->fault != NULL && l->bl_len == 0 && io_uring_sq_ready(&l->ring) == 0)
		l->fault->nmsg = 0;
}

#else /* !UPROXY_FAULT_INJECTION: every hook is a constant the compiler folds away. */

static inline void fault_init(struct uring_loop *l)
{
	(void)l;
}
static inline void fault_ring_size(unsigned int *sq_entries, unsigned int *cq_entries)
{
	(void)sq_entries;
	(void)cq_entries;
}
static inline void fault_exit(struct uring_loop *l)
{
	(void)l;
}
static inline bool fault_roll(struct uring_loop *l, enum loop_fault k)
{
	(void)l;
	(void)k;
	return false;
}
static inline bool fault_post(struct uring_loop *l, enum loop_fault k, uint64_t tag, int res)
{
	(void)l;
	(void)k;
	(void)tag;
	(void)res;
	return false;
}
static inline bool fault_post2(struct uring_loop *l, enum loop_fault k, uint64_t tag, int res,
			       uint64_t ttag, int tres)
{
	(void)l;
	(void)k;
	(void)tag;
	(void)res;
	(void)ttag;
	(void)tres;
	return false;
}
static inline int fault_enter(struct uring_loop *l)
{
	(void)l;
	return 0;
}
static inline const struct msghdr *fault_short_msg(struct uring_loop *l, const struct msghdr *msg)
{
	(void)l;
	(void)msg;
	return NULL;
}
static inline unsigned int fault_short_len(struct uring_loop *l, unsigned int len)
{
	(void)l;
	return len;
}
static inline bool fault_holding(struct uring_loop *l)
{
	(void)l;
	return false;
}
static inline bool fault_take_fake_overflow(struct uring_loop *l)
{
	(void)l;
	return false;
}
static inline void fault_iteration_done(struct uring_loop *l)
{
	(void)l;
}

#endif

/* ---- synthetic completions ---- */

#ifdef UPROXY_FAULT_INJECTION
/* Queues a completion {tag, res, flags 0} for the next loop_run_once: what the kernel would
 * post for a request that failed at once. flags 0 also ends a multishot (no F_MORE). */
static bool syn_post(struct uring_loop *l, uint64_t tag, int res)
{
	if (l->syn_len == l->syn_cap) {
		unsigned int cap = l->syn_cap ? 2 * l->syn_cap : 64;
		struct loop_cqe *p = realloc(l->syn, cap * sizeof(*p));

		if (p == NULL)
			return false;
		l->syn = p;
		l->syn_cap = cap;
	}
	memset(&l->syn[l->syn_len], 0, sizeof(l->syn[0]));
	l->syn[l->syn_len].tag = tag;
	l->syn[l->syn_len].res = res;
	l->syn_len++;
	return true;
}

/* Hands out the synthetic completions queued before this call; those the callbacks post now
 * wait for the next iteration, so a failing retry cannot loop here. */
static int syn_dispatch(struct uring_loop *l, loop_cqe_fn fn, void *ctx)
{
	unsigned int n = l->syn_len;

	if (n == 0)
		return 0;
	for (unsigned int i = 0; i < n; i++) {
		struct loop_cqe c = l->syn[i]; /* fn may grow (move) l->syn */

		fn(ctx, &c);
	}
	memmove(l->syn, l->syn + n, (l->syn_len - n) * sizeof(l->syn[0]));
	l->syn_len -= n;
	return (int)n;
}
#else
static inline int syn_dispatch(struct uring_loop *l, loop_cqe_fn fn, void *ctx)
{
	(void)l;
	(void)fn;
	(void)ctx;
	return 0;
}
#endif

const char *loop_setup_error(int err)
{
	switch (err) {
	case EPERM:
		return "io_uring is not permitted here (EPERM): either the sysctl "
		       "kernel.io_uring_disabled is set (run 'sysctl kernel.io_uring_disabled=0' "
		       "as "
		       "root, or add this user to kernel.io_uring_group when it is 1), or a "
		       "seccomp "
		       "profile blocks io_uring_setup (Docker's default profile does: run the "
		       "container with --security-opt seccomp=unconfined or a profile allowing "
		       "io_uring_setup, io_uring_enter and io_uring_register)";
	case ENOSYS:
		return "this kernel has no io_uring (ENOSYS): it was built without CONFIG_IO_URING "
		       "or is older than 5.1; uproxy needs Linux 6.1 or newer";
	case ENOMEM:
		return "not enough locked memory for the io_uring rings (ENOMEM): raise "
		       "'ulimit -l' (RLIMIT_MEMLOCK) or use a kernel newer than 5.12";
	case EMFILE:
	case ENFILE:
		return "no file descriptor left for the io_uring instance (EMFILE/ENFILE)";
	case EINVAL:
		return "the kernel rejected the io_uring parameters (EINVAL): kernel too old?";
	default:
		return strerror(err);
	}
}

static const struct loop_ops uring_ops;

int loop_uring_new(unsigned int sq_entries, unsigned int cq_entries, struct loop **out, char *why,
		   size_t whylen)
{
	/* Most capable first. DEFER_TASKRUN (6.1) runs completions only when we ask, in our own
	 * thread, which batches them; each fallback drops what an older kernel refuses. */
	static const unsigned int tries[] = {
		IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER |
			IORING_SETUP_DEFER_TASKRUN,
		IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER,
		IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN,
		0,
	};
	struct uring_loop *l = calloc(1, sizeof(*l));
	int rc = -EINVAL;

	if (l == NULL) {
		snprintf(why, whylen, "cannot set up io_uring: out of memory");
		return -ENOMEM;
	}
	fault_ring_size(&sq_entries, &cq_entries);
	for (size_t i = 0; i < sizeof(tries) / sizeof(tries[0]); i++) {
		struct io_uring_params p;

		memset(&p, 0, sizeof(p));
		p.flags = tries[i] | IORING_SETUP_CQSIZE;
		p.cq_entries = cq_entries;
		rc = io_uring_queue_init_params(sq_entries, &l->ring, &p);
		if (rc == 0) {
			l->setup_flags = tries[i];
			break;
		}
		if (rc != -EINVAL)
			break;
	}
	if (rc < 0) {
		snprintf(why, whylen, "cannot set up io_uring: %s", loop_setup_error(-rc));
		free(l);
		return rc;
	}
	/* A registered ring fd saves an fdget/fdput per io_uring_enter (5.18). */
	l->ring_fd_registered = io_uring_register_ring_fd(&l->ring) == 1;
#ifdef UPROXY_FAULT_INJECTION
	if (getenv("UPROXY_FAULT_CQ_ENTRIES") != NULL)
		log_warn("UPROXY_FAULT_CQ_ENTRIES=%s: ring sq=%u cq=%u",
			 getenv("UPROXY_FAULT_CQ_ENTRIES"), l->ring.sq.ring_entries,
			 l->ring.cq.ring_entries);
#endif
	l->base.ops = &uring_ops;
	l->base.st.backend = "io_uring";
	fault_init(l);
	*out = &l->base;
	return 0;
}

static void u_free(struct loop *lb_)
{
	struct uring_loop *l = (struct uring_loop *)lb_;

	if (l == NULL)
		return;
	fault_exit(l);
	/* Ends (cancels and waits out) every request, so no send can read a buffer after this. */
	io_uring_queue_exit(&l->ring);
	if (l->pbuf != NULL)
		munmap(l->pbuf, l->pbuf_bytes);
	while (l->ts_head != NULL) {
		struct ts_chunk *c = l->ts_head;

		l->ts_head = c->next;
		free(c);
	}
	free(l->bl);
	free(l->syn);
	free(l);
}

static void u_describe(const struct loop *lb_, char *buf, size_t len)
{
	const struct uring_loop *l = (const struct uring_loop *)lb_;

	snprintf(buf, len, "ring sq=%u cq=%u flags=0x%x ring_fd_registered=%d",
		 l->ring.sq.ring_entries, l->ring.cq.ring_entries, l->setup_flags,
		 l->ring_fd_registered);
}

/* ---- provided buffers ---- */

static int u_pbuf_register(struct loop *lb_, uint16_t bgid, uint32_t entries, char *why,
			   size_t whylen)
{
	struct uring_loop *l = (struct uring_loop *)lb_;
	struct io_uring_buf_reg reg;
	int rc;

	l->pbuf_bytes = (size_t)entries * sizeof(struct io_uring_buf);
	l->pbuf = mmap(NULL, l->pbuf_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
		       0);
	if (l->pbuf == MAP_FAILED) {
		l->pbuf = NULL;
		snprintf(why, whylen, "cannot allocate the buffer ring: %s", strerror(errno));
		return -ENOMEM;
	}
	io_uring_buf_ring_init(l->pbuf);
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (uint64_t)(uintptr_t)l->pbuf;
	reg.ring_entries = entries;
	reg.bgid = bgid;
	rc = io_uring_register_buf_ring(&l->ring, &reg, 0);
	if (rc < 0) {
		snprintf(why, whylen,
			 "cannot register the provided-buffer ring: %s "
			 "(needs Linux 5.19 or newer)",
			 strerror(-rc));
		munmap(l->pbuf, l->pbuf_bytes);
		l->pbuf = NULL;
		return rc;
	}
	l->pbuf_entries = entries;
	l->pbuf_bgid = bgid;
	return 0;
}

static void u_pbuf_add(struct loop *lb_, void *addr, uint32_t len, uint16_t bid, int offset)
{
	struct uring_loop *l = (struct uring_loop *)lb_;

	io_uring_buf_ring_add(l->pbuf, addr, len, bid, io_uring_buf_ring_mask(l->pbuf_entries),
			      offset);
}

static void u_pbuf_publish(struct loop *lb_, int count)
{
	struct uring_loop *l = (struct uring_loop *)lb_;

	io_uring_buf_ring_advance(l->pbuf, count);
}

/* ---- timespecs of timeout SQEs ---- */

static struct __kernel_timespec *ts_get(struct uring_loop *l, uint32_t ms)
{
	struct __kernel_timespec *ts;

	if (l->ts_cur == NULL || l->ts_used == LOOP_TS_CHUNK) {
		struct ts_chunk *next = l->ts_cur != NULL ? l->ts_cur->next : l->ts_head;

		if (next == NULL) {
			/* Never fails for good: a timeout the caller counts in flight must go in.
			 */
			while ((next = calloc(1, sizeof(*next))) == NULL) {
				struct timespec nap = { .tv_sec = 0, .tv_nsec = 1000000 };

				log_error("no memory for an io_uring timeout; waiting");
				nanosleep(&nap, NULL);
			}
			if (l->ts_cur != NULL)
				l->ts_cur->next = next;
			else
				l->ts_head = next;
		}
		l->ts_cur = next;
		l->ts_used = 0;
	}
	ts = &l->ts_cur->ts[l->ts_used++];
	ts->tv_sec = ms / 1000;
	ts->tv_nsec = (long long)(ms % 1000) * 1000000;
	return ts;
}

/* After a submit: once nothing waits in the SQ or the backlog, the kernel has copied every
 * timespec handed out, and they can be handed out again. */
static void ts_recycle(struct uring_loop *l)
{
	if (l->bl_len == 0 && io_uring_sq_ready(&l->ring) == 0) {
		l->ts_cur = NULL;
		l->ts_used = 0;
	}
}

static int u_probe(struct loop *lb_, char *why, size_t whylen)
{
	struct uring_loop *l = (struct uring_loop *)lb_;
	static const struct {
		int op;
		const char *name;
	} needed[] = {
		{ IORING_OP_ACCEPT, "ACCEPT" },	  { IORING_OP_CONNECT, "CONNECT" },
		{ IORING_OP_RECV, "RECV" },	  { IORING_OP_SEND, "SEND" },
		{ IORING_OP_SENDMSG, "SENDMSG" }, { IORING_OP_SHUTDOWN, "SHUTDOWN" },
		{ IORING_OP_CLOSE, "CLOSE" },	  { IORING_OP_ASYNC_CANCEL, "ASYNC_CANCEL" },
		{ IORING_OP_SOCKET, "SOCKET" },	  { IORING_OP_READ, "READ" },
		{ IORING_OP_TIMEOUT, "TIMEOUT" },
	};
	struct io_uring_probe *probe = io_uring_get_probe_ring(&l->ring);
	struct utsname u;
	int major = 0, minor = 0;

	if (probe == NULL) {
		snprintf(why, whylen, "cannot probe io_uring operations (kernel older than 5.6?)");
		return -ENOTSUP;
	}
	for (size_t i = 0; i < sizeof(needed) / sizeof(needed[0]); i++) {
		if (!io_uring_opcode_supported(probe, needed[i].op)) {
			snprintf(
				why, whylen,
				"this kernel's io_uring lacks IORING_OP_%s; uproxy needs Linux 6.1 "
				"or newer",
				needed[i].name);
			io_uring_free_probe(probe);
			return -ENOTSUP;
		}
	}
	io_uring_free_probe(probe);
	/* Multishot recv and provided-buffer rings cannot be probed by opcode: they came with 6.0
	 * and 5.19. */
	if (uname(&u) == 0 && sscanf(u.release, "%d.%d", &major, &minor) == 2 &&
	    (major < 6 || (major == 6 && minor < 1))) {
		snprintf(why, whylen,
			 "kernel %s is too old: uproxy needs Linux 6.1 or newer (multishot recv, "
			 "provided-buffer rings)",
			 u.release);
		return -ENOTSUP;
	}
	return 0;
}

/* ---- submission: the ring, and the backlog behind it ---- */

/* io_uring_submit, counted; an injected enter fault stands in for the syscall. */
static int ring_submit(struct uring_loop *l)
{
	int rc = fault_enter(l);

	if (rc == 0)
		rc = io_uring_submit(&l->ring);
	l->base.st.enters++;
	if (rc > 0)
		l->base.st.submitted += (uint64_t)rc;
	if (rc >= 0)
		ts_recycle(l);
	return rc;
}

/* Makes room for n more backlog entries. The backlog only holds requests their callers count
 * in flight (at most WORKER_CQES_PER_SESSION per session plus a few per worker), so its size is
 * bounded by the requests in flight, like the CQ; it never shrinks, and starts at the SQ size. */
static bool bl_reserve(struct uring_loop *l, unsigned int n)
{
	unsigned int cap;
	struct io_uring_sqe *p;

	if (l->bl_head + l->bl_len + n <= l->bl_cap)
		return true;
	if (l->bl_head > 0) {
		memmove(l->bl, l->bl + l->bl_head, l->bl_len * sizeof(*l->bl));
		l->bl_head = 0;
		if (l->bl_len + n <= l->bl_cap)
			return true;
	}
	cap = l->bl_cap ? l->bl_cap : l->ring.sq.ring_entries;
	while (cap < l->bl_len + n)
		cap *= 2;
	p = realloc(l->bl, (size_t)cap * sizeof(*p));
	if (p == NULL)
		return false;
	l->bl = p;
	l->bl_cap = cap;
	return true;
}

/* SQEs at the backlog's head that form one link chain (IOSQE_IO_LINK/HARDLINK on all but the
 * last): they enter the ring together or not at all. */
static unsigned int bl_chain_len(const struct uring_loop *l)
{
	unsigned int n = 1;

	while (n < l->bl_len &&
	       (l->bl[l->bl_head + n - 1].flags & (IOSQE_IO_LINK | IOSQE_IO_HARDLINK)))
		n++;
	return n;
}

/* Moves backlog SQEs into the ring, in order, whole chains at a time; submits to make room if
 * may_submit. Stops when the backlog is empty, or the ring is full and cannot be submitted. */
static void bl_flush(struct uring_loop *l, bool may_submit)
{
	while (l->bl_len > 0) {
		unsigned int n = bl_chain_len(l);

		if (io_uring_sq_space_left(&l->ring) < n) {
			if (!may_submit)
				break;
			l->base.st.sq_full++;
			if (ring_submit(l) < 0 || io_uring_sq_space_left(&l->ring) < n)
				break;
			continue;
		}
		for (unsigned int i = 0; i < n; i++)
			*io_uring_get_sqe(&l->ring) = l->bl[l->bl_head + i];
		l->bl_head += n;
		l->bl_len -= n;
	}
	if (l->bl_len == 0)
		l->bl_head = 0;
}

/* Out of memory for the backlog, with the ring full: wait for the kernel to take SQEs. Returns
 * once n can go into the ring (true) or the backlog (false). Never gives up: dropping an SQE
 * would strand a request its caller counts in flight. */
static bool bl_wait_room(struct uring_loop *l, unsigned int n)
{
	for (;;) {
		struct timespec ts = { .tv_sec = 0, .tv_nsec = 1000000 };

		ring_submit(l);
		bl_flush(l, true);
		if (l->bl_len == 0 && io_uring_sq_space_left(&l->ring) >= n)
			return true;
		if (bl_reserve(l, n))
			return false;
		log_error("no memory for the io_uring submission backlog; waiting");
		nanosleep(&ts, NULL);
	}
}

static struct io_uring_sqe *bl_push(struct uring_loop *l)
{
	struct io_uring_sqe *sqe;

	if (!bl_reserve(l, 1) && bl_wait_room(l, 1))
		return io_uring_get_sqe(&l->ring);
	sqe = &l->bl[l->bl_head + l->bl_len++];
	memset(sqe, 0, sizeof(*sqe));
	l->base.st.sq_backlog++;
	return sqe;
}

/* The SQE to fill next: in the ring, or in the backlog when the ring is full and cannot be
 * submitted (or older SQEs already wait there: order is kept). Never NULL. */
static struct io_uring_sqe *get_sqe(struct uring_loop *l)
{
	struct io_uring_sqe *sqe;

	if (l->chain_left > 0) {
		/* The rest of a chain goes where reserve_sqes put its head. */
		l->chain_left--;
		return l->chain_backlog ? bl_push(l) : io_uring_get_sqe(&l->ring);
	}
	if (l->bl_len > 0) {
		bl_flush(l, false);
		if (l->bl_len > 0)
			return bl_push(l);
	}
	if (fault_roll(l, LOOP_FAULT_SQ_FULL)) {
		l->base.st.faults[LOOP_FAULT_SQ_FULL]++;
		return bl_push(l);
	}
	sqe = io_uring_get_sqe(&l->ring);
	if (sqe == NULL) {
		l->base.st.sq_full++;
		if (ring_submit(l) >= 0)
			sqe = io_uring_get_sqe(&l->ring);
		if (sqe == NULL)
			sqe = bl_push(l);
	}
	return sqe;
}

/* Places the next n SQEs, a link chain, together: all in the ring (submitting first if it has
 * less room) or all in the backlog. A chain split over two submits would lose its link. */
static void reserve_sqes(struct uring_loop *l, unsigned int n)
{
	l->chain_left = n;
	l->chain_backlog = false;
	if (l->bl_len > 0)
		bl_flush(l, false);
	if (l->bl_len == 0 && !fault_roll(l, LOOP_FAULT_SQ_FULL)) {
		if (io_uring_sq_space_left(&l->ring) < n) {
			l->base.st.sq_full++;
			ring_submit(l);
		}
		if (io_uring_sq_space_left(&l->ring) >= n)
			return;
	} else if (l->bl_len == 0) {
		l->base.st.faults[LOOP_FAULT_SQ_FULL]++;
	}
	if (!bl_reserve(l, n) && bl_wait_room(l, n))
		return;
	l->chain_backlog = true;
}

/* ---- the wait, and reaping ---- */

/* Transient io_uring_enter failures: the kernel is short of memory or busy (EAGAIN, ENOMEM,
 * EBUSY), or a signal came (EINTR). Anything else (EBADF, EFAULT, EINVAL, ...) means the ring
 * itself is broken. ETIME is the wait's own timeout, not an error. */
static bool enter_transient(int err)
{
	return err == -EINTR || err == -EAGAIN || err == -ENOMEM || err == -EBUSY;
}

#define LOOP_BACKOFF_MIN_MS 1
#define LOOP_BACKOFF_MAX_MS 100

/* Sleeps 1, 2, 4 ... 100 ms while the error repeats, so a kernel short of memory is not hammered;
 * an EINTR retries at once (a signal is news, not pressure). */
static void enter_backoff(struct uring_loop *l, int err)
{
	struct timespec ts;

	l->base.st.enter_retries++;
	if (err == -EINTR)
		return;
	l->backoff_ms = l->backoff_ms == 0 ? LOOP_BACKOFF_MIN_MS : 2 * l->backoff_ms;
	if (l->backoff_ms > LOOP_BACKOFF_MAX_MS)
		l->backoff_ms = LOOP_BACKOFF_MAX_MS;
	ts.tv_sec = 0;
	ts.tv_nsec = (long)l->backoff_ms * 1000000;
	nanosleep(&ts, NULL);
}

/* Hands every CQE now in the CQ ring to fn. (liburing 2.3's peek_batch flushes the kernel's
 * overflow backlog itself only when it finds the CQ empty; reap_all checks the flag after.) */
static int reap(struct uring_loop *l, loop_cqe_fn fn, void *ctx)
{
	struct io_uring_cqe *cqes[LOOP_CQE_BATCH];
	int total = 0;

	for (;;) {
		unsigned int n = io_uring_peek_batch_cqe(&l->ring, cqes, LOOP_CQE_BATCH);

		for (unsigned int i = 0; i < n; i++) {
			const struct io_uring_cqe *k = cqes[i];
			struct loop_cqe c = {
				.tag = k->user_data,
				.res = k->res,
				.flags = (uint16_t)(((k->flags & IORING_CQE_F_MORE) ? LOOP_CQE_MORE
										    : 0) |
						    ((k->flags & IORING_CQE_F_BUFFER)
							     ? LOOP_CQE_BUFFER
							     : 0)),
				.bid = (uint16_t)(k->flags >> IORING_CQE_BUFFER_SHIFT),
			};

			fn(ctx, &c);
		}
		io_uring_cq_advance(&l->ring, n);
		total += (int)n;
		if (n < LOOP_CQE_BATCH)
			break;
	}
	return total;
}

/* Rounds of flush + reap per iteration when the CQ overflowed; each round moves up to a CQ's
 * worth from the kernel's backlog, the rest waits for the next iteration (the flag stays set). */
#define LOOP_OVERFLOW_ROUNDS 64

/* Reaps, then drains the kernel's overflow backlog. Since 5.5 the kernel keeps completions
 * that did not fit in the CQ on a list and sets IORING_SQ_CQ_OVERFLOW; since 5.19/6.x it no
 * longer bumps koverflow for them (only for completions it had to drop, when even the list's
 * allocation failed), and a submit need not fail with -EBUSY. An enter with GETEVENTS moves
 * them into the CQ. Each iteration that sees the flag or koverflow move is one episode in
 * st.cq_overflow; koverflow's increase (completions lost for good) goes to st.cq_lost. */
static int reap_all(struct uring_loop *l, loop_cqe_fn fn, void *ctx, bool fake)
{
	int total = reap(l, fn, ctx);
	unsigned long suppressed;

	for (int round = 0; round < LOOP_OVERFLOW_ROUNDS; round++) {
		bool flag = io_uring_cq_has_overflow(&l->ring);
		unsigned int kov = IO_URING_READ_ONCE(*l->ring.cq.koverflow);
		int rc;

		if (!flag && kov == l->koverflow_seen && !(fake && round == 0))
			break;
		if (round == 0 && (flag || kov != l->koverflow_seen)) {
			l->base.st.cq_overflow++;
			l->base.st.cq_lost += kov - l->koverflow_seen;
			if (log_ratelimit_ok(&l->rl_overflow, &suppressed))
				log_error("io_uring completion queue overflowed (%u completions "
					  "lost, "
					  "the rest flushed from the kernel's backlog): the CQ is "
					  "undersized (%lu similar messages suppressed)",
					  kov - l->koverflow_seen, suppressed);
			l->koverflow_seen = kov;
		}
		/* io_uring_get_events (liburing 2.3): io_uring_enter(0, 0, GETEVENTS). */
		rc = io_uring_get_events(&l->ring);
		l->base.st.enters++;
		if (rc < 0 && !enter_transient(rc))
			break;
		total += reap(l, fn, ctx);
	}
	return total;
}

static int u_run_once(struct loop *lb_, loop_cqe_fn fn, void *ctx, int64_t timeout_ms)
{
	struct uring_loop *l = (struct uring_loop *)lb_;
	bool hold, fake;
	int rc, total = 0;

	/* SQEs that found the ring full go in first, in their order. */
	if (l->bl_len > 0)
		bl_flush(l, true);
	hold = fault_holding(l);
	fake = fault_take_fake_overflow(l);
	if (l->syn_len > 0 || hold)
		timeout_ms = 0; /* completions are waiting already: do not sleep */
	rc = fault_enter(l);
	if (rc == 0) {
		if (hold) {
			/* Submit and post completions into the CQ without reaping them. */
			rc = io_uring_submit_and_get_events(&l->ring);
		} else if (timeout_ms < 0) {
			rc = io_uring_submit_and_wait(&l->ring, 1);
		} else {
			/* One enter with a timeout argument (IORING_FEAT_EXT_ARG, 5.11): no
			 * timeout SQE. */
			struct __kernel_timespec ts = { .tv_sec = timeout_ms / 1000,
							.tv_nsec = (timeout_ms % 1000) * 1000000 };
			struct io_uring_cqe *cqe;

			rc = io_uring_submit_and_wait_timeout(&l->ring, &cqe, 1, &ts, NULL);
		}
	}
	l->base.st.enters++;
	if (rc >= 0 || rc == -ETIME) {
		if (rc > 0)
			l->base.st.submitted += (uint64_t)rc;
		l->backoff_ms = 0;
		ts_recycle(l);
	} else if (enter_transient(rc)) {
		/* Not fatal: what the CQ already holds is still reaped below, and whatever was
		 * not submitted stays in the SQ (or the backlog) for the next iteration. */
		enter_backoff(l, rc);
	} else {
		return rc;
	}
	if (!hold)
		total = reap_all(l, fn, ctx, fake);
	total += syn_dispatch(l, fn, ctx);
	fault_iteration_done(l);
	l->base.st.cqes += (uint64_t)total;
	return total;
}

/* ---- submission helpers ---- */

static void u_accept_multishot(struct loop *lb_, int fd, uint64_t tag)
{
	struct uring_loop *l = (struct uring_loop *)lb_;
	struct io_uring_sqe *sqe = get_sqe(l);

	io_uring_prep_multishot_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, tag);
}

static void u_accept(struct loop *lb_, int fd, uint64_t tag)
{
	struct uring_loop *l = (struct uring_loop *)lb_;
	struct io_uring_sqe *sqe = get_sqe(l);

	io_uring_prep_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, tag);
}

static void u_read(struct loop *lb_, int fd, void *buf, unsigned int len, uint64_t tag)
{
	struct uring_loop *l = (struct uring_loop *)lb_;
	struct io_uring_sqe *sqe = get_sqe(l);

	io_uring_prep_read(sqe, fd, buf, len, 0);
	io_uring_sqe_set_data64(sqe, tag);
}

static void u_timeout(struct loop *lb_, uint32_t ms, uint64_t tag)
{
	struct uring_loop *l = (struct uring_loop *)lb_;
	struct __kernel_timespec *ts = ts_get(l, ms);
	struct io_uring_sqe *sqe = get_sqe(l);

	io_uring_prep_timeout(sqe, ts, 0, 0);
	io_uring_sqe_set_data64(sqe, tag);
}

static void u_socket(struct loop *lb_, int domain, int type, int protocol, uint64_t tag)
{
	struct uring_loop *l = (struct uring_loop *)lb_;
	struct io_uring_sqe *sqe;

	/* IORING_OP_SOCKET: 5.19. */
	if (fault_post(l, LOOP_FAULT_SOCKET, tag, -EMFILE))
		return;
	sqe = get_sqe(l);
	io_uring_prep_socket(sqe, domain, type, protocol, 0);
	io_uring_sqe_set_data64(sqe, tag);
}

static void u_connect(struct loop *lb_, int fd, const struct sockaddr *sa, socklen_t len,
		      uint64_t tag)
{
	struct uring_loop *l = (struct uring_loop *)lb_;
	struct io_uring_sqe *sqe;

	if (fault_post(l, LOOP_FAULT_CONNECT, tag, -ECONNREFUSED))
		return;
	sqe = get_sqe(l);
	io_uring_prep_connect(sqe, fd, sa, len);
	io_uring_sqe_set_data64(sqe, tag);
}

static void link_timeout(struct uring_loop *l, uint32_t ms, uint64_t ttag)
{
	struct __kernel_timespec *ts = ts_get(l, ms);
	struct io_uring_sqe *sqe = get_sqe(l);

	/* IORING_OP_LINK_TIMEOUT: 5.5. */
	io_uring_prep_link_timeout(sqe, ts, 0);
	io_uring_sqe_set_data64(sqe, ttag);
}

static void u_connect_timeout(struct loop *lb_, int fd, const struct sockaddr *sa, socklen_t len,
			      uint32_t ms, uint64_t tag, uint64_t ttag)
{
	struct uring_loop *l = (struct uring_loop *)lb_;
	struct io_uring_sqe *sqe;

	/* A failed connect cancels its linked timeout: two completions, as the callers count. */
	if (fault_post2(l, LOOP_FAULT_CONNECT, tag, -ECONNREFUSED, ttag, -ECANCELED))
		return;
	reserve_sqes(l, 2);
	sqe = get_sqe(l);
	io_uring_prep_connect(sqe, fd, sa, len);
	sqe->flags |= IOSQE_IO_LINK;
	io_uring_sqe_set_data64(sqe, tag);
	link_timeout(l, ms, ttag);
}

/* A buffer-select recv that fails at once: out of buffers, or the peer reset. */
static bool recv_fault(struct uring_loop *l, uint64_t tag)
{
	return fault_post(l, LOOP_FAULT_ENOBUFS, tag, -ENOBUFS) ||
	       fault_post(l, LOOP_FAULT_RECV_RESET, tag, -ECONNRESET);
}

/* A buffer-select recv: single-shot, multishot (6.0), or multishot with bundles (6.10: each
 * completion may fill several consecutive buffers of the ring); provided-buffer rings: 5.19.
 * The one place these are prepared, so every kind goes through the fault hooks alike. */
static void prep_select_recv(struct uring_loop *l, int fd, uint16_t bgid, uint64_t tag,
			     bool multishot, bool bundle)
{
	struct io_uring_sqe *sqe;

	if (recv_fault(l, tag))
		return;
	sqe = get_sqe(l);
	if (multishot)
		io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
	else
		io_uring_prep_recv(sqe, fd, NULL, 0, 0);
	if (bundle)
		sqe->ioprio |= IORING_RECVSEND_BUNDLE;
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = bgid;
	io_uring_sqe_set_data64(sqe, tag);
}

static void u_recv_multishot(struct loop *lb_, int fd, uint16_t bgid, uint64_t tag)
{
	prep_select_recv((struct uring_loop *)lb_, fd, bgid, tag, true, false);
}

static void u_recv(struct loop *lb_, int fd, uint16_t bgid, uint64_t tag)
{
	prep_select_recv((struct uring_loop *)lb_, fd, bgid, tag, false, false);
}

static void u_recv_buf(struct loop *lb_, int fd, void *buf, unsigned int len, uint64_t tag)
{
	struct uring_loop *l = (struct uring_loop *)lb_;
	struct io_uring_sqe *sqe = get_sqe(l);

	io_uring_prep_recv(sqe, fd, buf, len, 0);
	io_uring_sqe_set_data64(sqe, tag);
}

static void u_send(struct loop *lb_, int fd, const void *buf, unsigned int len, uint64_t tag)
{
	struct uring_loop *l = (struct uring_loop *)lb_;
	struct io_uring_sqe *sqe;

	if (fault_post(l, LOOP_FAULT_SEND_RESET, tag, -ECONNRESET))
		return;
	len = fault_short_len(l, len);
	sqe = get_sqe(l);
	io_uring_prep_send(sqe, fd, buf, len, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, tag);
}

static void u_recv_buf_timeout(struct loop *lb_, int fd, void *buf, unsigned int len, uint32_t ms,
			       uint64_t tag, uint64_t ttag)
{
	struct uring_loop *l = (struct uring_loop *)lb_;
	struct io_uring_sqe *sqe;

	reserve_sqes(l, 2);
	sqe = get_sqe(l);
	io_uring_prep_recv(sqe, fd, buf, len, 0);
	sqe->flags |= IOSQE_IO_LINK;
	io_uring_sqe_set_data64(sqe, tag);
	link_timeout(l, ms, ttag);
}

static void u_send_timeout(struct loop *lb_, int fd, const void *buf, unsigned int len, uint32_t ms,
			   uint64_t tag, uint64_t ttag)
{
	struct uring_loop *l = (struct uring_loop *)lb_;
	struct io_uring_sqe *sqe;

	reserve_sqes(l, 2);
	sqe = get_sqe(l);
	io_uring_prep_send(sqe, fd, buf, len, MSG_NOSIGNAL);
	sqe->flags |= IOSQE_IO_LINK;
	io_uring_sqe_set_data64(sqe, tag);
	link_timeout(l, ms, ttag);
}

static void u_write(struct loop *lb_, int fd, const void *buf, unsigned int len, uint64_t tag)
{
	struct uring_loop *l = (struct uring_loop *)lb_;
	struct io_uring_sqe *sqe = get_sqe(l);

	/* offset -1: the file position, which O_APPEND keeps at the end. */
	io_uring_prep_write(sqe, fd, buf, len, (uint64_t)-1);
	io_uring_sqe_set_data64(sqe, tag);
}

static void u_sendmsg(struct loop *lb_, int fd, const struct msghdr *msg, uint64_t tag)
{
	struct uring_loop *l = (struct uring_loop *)lb_;
	struct io_uring_sqe *sqe;
	const struct msghdr *m;

	if (fault_post(l, LOOP_FAULT_SEND_RESET, tag, -ECONNRESET))
		return;
	/* A short send on a trimmed private copy: the caller's msghdr is left as it was. */
	m = fault_short_msg(l, msg);
	sqe = get_sqe(l);
	io_uring_prep_sendmsg(sqe, fd, m != NULL ? m : msg, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, tag);
}

static void u_shutdown(struct loop *lb_, int fd, int how, uint64_t tag)
{
	struct uring_loop *l = (struct uring_loop *)lb_;
	struct io_uring_sqe *sqe = get_sqe(l);

	io_uring_prep_shutdown(sqe, fd, how);
	io_uring_sqe_set_data64(sqe, tag);
}

static void u_close(struct loop *lb_, int fd, uint64_t tag)
{
	struct uring_loop *l = (struct uring_loop *)lb_;
	struct io_uring_sqe *sqe = get_sqe(l);

	io_uring_prep_close(sqe, fd);
	io_uring_sqe_set_data64(sqe, tag);
}

static void u_cancel(struct loop *lb_, uint64_t target, uint64_t tag)
{
	struct uring_loop *l = (struct uring_loop *)lb_;
	struct io_uring_sqe *sqe = get_sqe(l);

	io_uring_prep_cancel64(sqe, target, 0);
	io_uring_sqe_set_data64(sqe, tag);
}

static void u_cancel_fd_then_close(struct loop *lb_, int fd, uint64_t cancel_tag,
				   uint64_t close_tag)
{
	struct uring_loop *l = (struct uring_loop *)lb_;
	struct io_uring_sqe *sqe;

	reserve_sqes(l, 2);
	sqe = get_sqe(l);
	/* IORING_ASYNC_CANCEL_FD/ALL: 5.19. */
	io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
	/* Hard link: the close runs even when the cancel found nothing (-ENOENT). */
	sqe->flags |= IOSQE_IO_HARDLINK;
	io_uring_sqe_set_data64(sqe, cancel_tag);
	sqe = get_sqe(l);
	io_uring_prep_close(sqe, fd);
	io_uring_sqe_set_data64(sqe, close_tag);
}

/* ---- receive bundles (6.10) ---- */

static bool u_has_recv_bundle(const struct loop *lb_)
{
	const struct uring_loop *l = (const struct uring_loop *)lb_;

	return l->ring.features & IORING_FEAT_RECVSEND_BUNDLE;
}

static void u_recv_bundle(struct loop *lb_, int fd, uint16_t bgid, uint64_t tag)
{
	prep_select_recv((struct uring_loop *)lb_, fd, bgid, tag, true, true);
}

static const struct loop_ops uring_ops = {
	.name = "io_uring",
	.free = u_free,
	.describe = u_describe,
	.probe = u_probe,
	.run_once = u_run_once,
#ifdef UPROXY_FAULT_INJECTION
	.fault_session_start = u_fault_session_start,
#endif
	.pbuf_register = u_pbuf_register,
	.pbuf_add = u_pbuf_add,
	.pbuf_publish = u_pbuf_publish,
	.accept_multishot = u_accept_multishot,
	.accept = u_accept,
	.read = u_read,
	.timeout = u_timeout,
	.socket = u_socket,
	.connect = u_connect,
	.connect_timeout = u_connect_timeout,
	.recv_multishot = u_recv_multishot,
	.has_recv_bundle = u_has_recv_bundle,
	.recv_bundle = u_recv_bundle,
	.recv = u_recv,
	.send = u_send,
	.recv_buf = u_recv_buf,
	.recv_buf_timeout = u_recv_buf_timeout,
	.send_timeout = u_send_timeout,
	.write = u_write,
	.sendmsg = u_sendmsg,
	.shutdown = u_shutdown,
	.close = u_close,
	.cancel = u_cancel,
	.cancel_fd_then_close = u_cancel_fd_then_close,
};
