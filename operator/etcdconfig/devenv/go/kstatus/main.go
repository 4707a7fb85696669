// Command kstatus computes kstatus's status of one Kubernetes object with the reference
// implementation, sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute (what Flux's
// kustomize-controller and helm-controller, kpt and `kubectl wait`-like tools use), and prints
// the result as JSON: {"status": "Current", "message": ..., "conditions": [...]}.
//
//	kstatus < object.json
//
// The object is decoded as the API machinery decodes it (unstructured.UnstructuredJSONScheme:
// integers are int64), exactly as a client reading it from the API server sees it.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type condition struct {
	Type    string `json:"type"`
	Status  string `json:"status"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

type result struct {
	Status     string      `json:"status"`
	Message    string      `json:"message"`
	Conditions []condition `json:"conditions"`
}

func main() {
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(raw); err != nil {
		fail(fmt.Errorf("the object on stdin is not a Kubernetes object: %w", err))
	}
	res, err := status.Compute(u)
	if err != nil {
		fail(err)
	}
	out := result{Status: res.Status.String(), Message: res.Message, Conditions: []condition{}}
	for _, c := range res.Conditions {
		out.Conditions = append(out.Conditions, condition{
			Type: string(c.Type), Status: string(c.Status), Reason: c.Reason, Message: c.Message,
		})
	}
	text, err := json.Marshal(out)
	if err != nil {
		fail(err)
	}
	fmt.Println(string(text))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "kstatus:", err)
	os.Exit(1)
}
