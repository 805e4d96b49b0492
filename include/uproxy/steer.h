/* steer: pins each client address to one worker. Workers bind one SO_REUSEPORT listener each;
 * by default the kernel picks the socket from a hash of the whole 4-tuple, so two connections of
 * one client may land on different workers and a per-worker client table (climit.h) would see
 * only part of them. steer_attach gives the reuseport group a classic-BPF program that picks the
 * socket from the client's source address alone. */
#ifndef UPROXY_STEER_H
#define UPROXY_STEER_H

#include <stddef.h>

/* Attaches SO_ATTACH_REUSEPORT_CBPF to fd's reuseport group: a connection from source address
 * A goes to socket hash(A) % nworkers of the group, in the order the group's sockets were put
 * in listen state (bind + listen them in worker order: worker i's socket is index i). The
 * program reads the IP header (IPv4 source at SKF_NET_OFF + 12, IPv6 at SKF_NET_OFF + 8) and
 * branches on its version nibble, so one program serves IPv4, IPv6 and dual-stack listeners;
 * family (AF_INET or AF_INET6: the listener's) is only checked. The group shares one program:
 * calling this on every worker's socket just replaces it with the same one. nworkers is
 * 2..65535 (with 1 there is nothing to steer). If fewer sockets are in the group than the
 * program's index, the kernel falls back to its own hash for that connection. Returns 0, or
 * -errno with why filled. */
int steer_attach(int fd, unsigned int nworkers, int family, char *why, size_t whylen);

/* Takes the program off fd's reuseport group again (the kernel's hash picks once more).
 * Returns 0 (also when none was attached) or -errno. */
int steer_detach(int fd);

/* The worker index steer_attach's program picks for the IPv4 address (network byte order, 4
 * bytes) or IPv6 address (16 bytes) at addr: the same computation in C, for tests and logs. */
unsigned int steer_index(const void *addr, size_t len, unsigned int nworkers);

#endif
