/* util: the small helpers every module would otherwise write again: the monotonic clock, and
 * closing a socket with a reset. Header-only; no state, no allocation. */
#ifndef UPROXY_UTIL_H
#define UPROXY_UTIL_H

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

static inline uint64_t monotonic_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static inline uint64_t monotonic_ms(void)
{
	return monotonic_us() / 1000;
}

/* Makes the next close() of fd send an RST instead of a FIN (SO_LINGER {1, 0}): for a peer
 * that must learn that its stream was cut, never that it ended. */
static inline void sock_linger_rst(int fd)
{
	static const struct linger lg = { .l_onoff = 1, .l_linger = 0 };

	(void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}

/* Unsent bytes a forwarding socket may hold before a send waits (TCP_NOTSENT_LOWAT, 3.12).
 * Without it loopback autotunes a send buffer of 4 MiB, and a send into a full one completes
 * only after a third of it drained: a client reading 640 KiB/s saw no send completion for
 * 2.2-2.8 s, so "progress" (the idle timer) could not be told from a stall. 128 KiB, half the
 * session high-water mark, gives a completion per ~64-128 KiB moved and bounds the unsent
 * bytes the kernel holds per socket. */
#define SOCK_NOTSENT_LOWAT (128 * 1024)

/* Options of every socket that forwards bytes: no Nagle delay (a response's tail leaves at
 * once) and SOCK_NOTSENT_LOWAT. Set on listeners, whose accepted sockets inherit them, and on
 * each upstream socket. */
static inline void sock_set_forwarding(int fd)
{
	static const int one = 1, lowat = SOCK_NOTSENT_LOWAT;

	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof(lowat));
}

/* TCP keepalive (keepalive-client, keepalive-upstream): a peer that vanished without a FIN or
 * RST is found after idle + interval x count seconds instead of lingering until the idle
 * timeout. Returns 0 or -errno (the first setsockopt that failed). */
static inline int sock_set_keepalive(int fd, uint32_t idle_s, uint32_t interval_s, uint32_t count)
{
	const int one = 1, idle = (int)idle_s, intvl = (int)interval_s, cnt = (int)count;

	if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle)) < 0 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl)) < 0 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt)) < 0)
		return -errno;
	return 0;
}

#endif
