/* The tiny /init of scripts/bench-peer (and of the VM test of
 * `schedrig boot --initrd`): prints the guest clock once it runs, then
 * resets the machine (the command line's reboot=k), so every VMM measured
 * boots the same kernel to the same first user instruction and ends the
 * same way. Static; makes its own /dev/console if the archive has none. */
#include <fcntl.h>
#include <stdio.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
	struct timespec boot;
	char line[96];
	int n, fd;

	if (clock_gettime(CLOCK_BOOTTIME, &boot) != 0)
		boot.tv_sec = -1, boot.tv_nsec = 0;
	n = snprintf(line, sizeof line, "bench-peer-init: guest clock %ld.%06ld s\n",
		     (long)boot.tv_sec, boot.tv_nsec / 1000);
	/* The kernel gives init /dev/console as stdout when the archive has
	 * one; otherwise make it (errors here show as the write's). */
	if (write(1, line, n) != n) {
		mkdir("/dev", 0755);
		mknod("/dev/console", S_IFCHR | 0600, makedev(5, 1));
		fd = open("/dev/console", O_WRONLY);
		if (fd < 0 || write(fd, line, n) != n)
			perror("bench-peer-init: /dev/console");
	}
	reboot(RB_AUTOBOOT);
	perror("bench-peer-init: reboot");
	return 1;
}
