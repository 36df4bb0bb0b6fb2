// The pod sandbox ("pause") program of the offline kind node image.
module mtls-operator.io/hack/pause

go 1.26.0
