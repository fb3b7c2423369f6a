package admin_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/gofleet/fleet/admin"
)

// A public status page: the page alone, with no operator controls. In a
// program the Source is the *runtime.Runtime.
func ExampleStatusPage() {
	src := sixShards() // a fleet of 6 shards, two of them not ready
	public := http.NewServeMux()
	public.Handle("/", admin.StatusPage(src, admin.PageOptions{Title: "MyBot status"}))
	srv := httptest.NewServer(public)
	defer srv.Close()

	res, err := http.Get(srv.URL + "/status.json")
	if err != nil {
		panic(err)
	}
	defer res.Body.Close()
	var v struct {
		Shards      int `json:"shards"`
		ShardsReady int `json:"shards_ready"`
	}
	if err := json.NewDecoder(res.Body).Decode(&v); err != nil {
		panic(err)
	}
	fmt.Printf("%d of %d shards ready\n", v.ShardsReady, v.Shards)
	// Output: 4 of 6 shards ready
}
