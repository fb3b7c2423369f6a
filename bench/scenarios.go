package main

func init() {
	register("bus", runBus)
}
