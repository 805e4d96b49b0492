/* TEMPORARY: replaced by the guard branch. */
#ifndef UPROXY_STEER_H
#define UPROXY_STEER_H
#include <stddef.h>
int steer_attach(int fd, unsigned int nworkers, int family, char *why, size_t whylen);
#endif
