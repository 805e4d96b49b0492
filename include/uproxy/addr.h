/* addr: parsing "[HOST]:PORT" and "unix:/path" strings, resolving them, printing and comparing
 * socket addresses. Pure logic apart from addr_resolve (getaddrinfo); never touches the ring. */
#ifndef UPROXY_ADDR_H
#define UPROXY_ADDR_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>

#define ADDR_HOST_MAX	  254 /* a DNS name is at most 253 characters */
#define ADDR_MAX_RESOLVED 16  /* addresses kept per name */

/*
 * The longest unix socket path (or abstract name, after its '@'): the kernel's sun_path holds
 * 108 bytes, and a path must fit with its terminating NUL (a 108-byte path without one is a
 * Linux quirk other tools cannot print or reach); an abstract name takes sun_path[0] for its
 * leading NUL, so it has 107 bytes too.
 */
#define ADDR_UNIX_PATH_MAX (sizeof(((struct sockaddr_un *)0)->sun_path) - 1)

/* addr_format's buffer size: "[v6]:65535", or "unix:@" and the longest name, with the NUL. */
#define ADDR_STRLEN (sizeof("unix:@") + ADDR_UNIX_PATH_MAX)

/* A parsed, unresolved "[HOST]:PORT" or "unix:/path". */
struct hostport {
	char host[ADDR_HOST_MAX]; /* empty when any is set */
	uint16_t port;
	bool any;	/* ":PORT" or "*:PORT": every local address */
	bool unix_sock; /* "unix:/path": host holds the path (< 108 bytes), port is 0; for an
			 * abstract socket ("unix:@name") host holds "@name" */
};

struct addr {
	union {
		struct sockaddr sa;
		struct sockaddr_in in4;
		struct sockaddr_in6 in6;
		struct sockaddr_un un;
		struct sockaddr_storage ss;
	} u;
	socklen_t len;
};

/*
 * Parses s into *out. Returns 0, or -EINVAL with *why set to a static explanation.
 * "unix:" starts a unix socket address (so a host named "unix" cannot be written), followed by
 * an absolute path ("unix:/run/x.sock") or an abstract name ("unix:@name", Linux). A relative
 * path is refused: it would name a different file for every working directory (systemd starts
 * services in /, and a config file's relative path would not be relative to the file). At most
 * ADDR_UNIX_PATH_MAX bytes, and no control character, '"' or '\\' (the address is printed
 * in log lines and quoted in metrics labels as is).
 */
int addr_parse(const char *s, struct hostport *out, const char **why);

/* Resolves a parsed host (not any) into at most max addresses, in resolver order, without
 * duplicates. Returns the count (> 0), or -1 with why (at least 128 bytes) filled. A unix
 * hostport gives exactly one AF_UNIX address (no lookup): its length is offsetof(sun_path) +
 * strlen(path) + 1, or for an abstract name offsetof(sun_path) + 1 + strlen(name). */
int addr_resolve(const struct hostport *hp, struct addr *out, int max, char *why, size_t whylen);

/* Formats a as "1.2.3.4:80", "[::1]:80", "unix:/path", "unix:@name" or, for an unnamed unix
 * socket (an accepted client's peer, which did not bind), "unix:", into buf (ADDR_STRLEN
 * bytes); returns buf. Bytes of an abstract name that are not printable are written as '?'. */
const char *addr_format(const struct addr *a, char *buf, size_t len);

/* Formats a hostport back into its canonical text form ("unix:/path" for a unix one), which
 * addr_parse reads back to the same hostport; returns buf. */
const char *addr_format_hostport(const struct hostport *hp, char *buf, size_t len);

/* The one address equality: true when a and b name the same socket endpoint, that is the same
 * family, address and port, and for IPv6 the same scope id (fe80::1%eth0 and fe80::1%eth1 are
 * different hosts). The IPv6 flow label names no endpoint and is ignored. An IPv4 address and
 * its v4-mapped IPv6 form (::ffff:a.b.c.d) are different families, so not equal. Two AF_UNIX
 * addresses are equal when both are unnamed, or both name the same path, or the same abstract
 * name (a path's trailing NUL or its absence in the length does not matter). Addresses of any
 * other family (e.g. a zeroed struct addr) are equal when their bytes are. */
bool addr_equal(const struct addr *a, const struct addr *b);

/* Builds a struct addr from a sockaddr of a known length. */
void addr_from_sockaddr(struct addr *a, const struct sockaddr *sa, socklen_t len);

#endif
